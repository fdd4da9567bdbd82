"""Accepting events: dedup marks in Redis, backpressure, and the hand-off to the publisher.

An event is answered `accepted` only once its task is in the queue; if the enqueue fails the dedup marks
are released, so the client's retry is accepted and nothing is half-accepted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from config.redis import get_redis
from ingestion.schema import ValidatedEvent
from publisher import metrics
from publisher import services as publisher_services

logger = logging.getLogger(__name__)

DEDUP_PREFIX = "ingest:dedup:"
ACCEPTED = "accepted"
DUPLICATE = "duplicate"
REJECTED = "rejected"


class ServiceUnavailable(Exception):
    """We cannot take work right now (queue full, Redis down); the client should retry after `retry_after`."""

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = settings.INGEST_RETRY_AFTER_SECONDS if retry_after is None else retry_after


@dataclass
class Outcome:
    """Per-index status for the accepted-or-duplicate events of one request."""

    statuses: dict[int, tuple[str, str]] = field(default_factory=dict)  # index -> (event_id, status)
    accepted: int = 0
    duplicates: int = 0


def check_backpressure() -> None:
    try:
        depth = publisher_services.queue_depth()
    except Exception as exc:
        raise ServiceUnavailable("The queue is unreachable; retry later.") from exc
    if depth > settings.INGEST_MAX_QUEUE_DEPTH:
        metrics.EVENTS_REJECTED.labels(reason="backpressure").inc()
        raise ServiceUnavailable(
            f"The publish queue holds {depth} events (limit {settings.INGEST_MAX_QUEUE_DEPTH}); retry later."
        )


PENDING_PREFIX = "p:"
PENDING_TTL = 30
PENDING_WAIT = (0.02, 0.05, 0.1)


def accept_events(*, events: Sequence[tuple[int, ValidatedEvent]], source: str) -> Outcome:
    """Dedup, then enqueue the new events as one task. Raises ServiceUnavailable without side effects left.

    A dedup mark is first claimed as pending (short TTL) and confirmed only once the task is queued, so if
    Redis or the enqueue fails in between, the mark cannot outlive the failure and block the client's retry.
    """
    outcome = Outcome()
    if not events:
        return outcome
    claimed, duplicate_ids = _claim_marks(events)
    to_publish: list[dict[str, Any]] = []
    for index, ev in events:
        if index in duplicate_ids:
            outcome.statuses[index] = (duplicate_ids[index], DUPLICATE)
            outcome.duplicates += 1
        else:
            to_publish.append(ev.data)
            outcome.statuses[index] = (str(ev.data["event_id"]), ACCEPTED)
            outcome.accepted += 1
    if to_publish:
        try:
            _hand_off(to_publish, source=source)
        except ServiceUnavailable:
            _release([key for key, _ in claimed])
            raise
    _confirm_marks(claimed)
    for index, ev in events:
        if outcome.statuses[index][1] == ACCEPTED:
            metrics.EVENTS_ACCEPTED.labels(event_type=ev.data["event_type"]).inc()
    if outcome.duplicates:
        metrics.EVENTS_DUPLICATE.inc(outcome.duplicates)
    return outcome


def _claim_marks(events: Sequence[tuple[int, ValidatedEvent]]) -> tuple[list[tuple[str, str]], dict[int, str]]:
    """Claim a pending dedup mark for every event that has a dedup key. Returns the marks claimed (key,
    event id) and, for the duplicates, the id of the event that holds the mark. Leaves nothing claimed when
    it raises."""
    keyed = [(index, ev, DEDUP_PREFIX + str(ev.dedup_key)) for index, ev in events if ev.dedup_key is not None]
    claimed: list[tuple[str, str]] = []
    duplicate_ids: dict[int, str] = {}
    if not keyed:
        return claimed, duplicate_ids
    try:
        # SET NX claims a key atomically across processes; GET returns what holds it.
        pipe = get_redis().pipeline(transaction=False)
        for _, ev, key in keyed:
            pipe.set(key, PENDING_PREFIX + ev.data["event_id"], nx=True, ex=PENDING_TTL)
            pipe.get(key)
        replies = pipe.execute()
        mine = {ev.data["event_id"] for n, (_, ev, _) in enumerate(keyed) if replies[2 * n]}
        undecided: list[tuple[int, str]] = []
        for n, (index, ev, key) in enumerate(keyed):
            if replies[2 * n]:
                claimed.append((key, ev.data["event_id"]))
                continue
            holder = _text(replies[2 * n + 1])
            if holder.startswith(PENDING_PREFIX) and holder[len(PENDING_PREFIX) :] in mine:
                duplicate_ids[index] = holder[len(PENDING_PREFIX) :]  # a repeat inside this request
            elif holder.startswith(PENDING_PREFIX):
                undecided.append((index, key))
            else:
                duplicate_ids[index] = holder or str(ev.data["event_id"])
        if undecided:
            duplicate_ids.update(_wait_for_confirmation(undecided))
    except ServiceUnavailable:
        _release([key for key, _ in claimed])
        raise
    except Exception as exc:
        _release([key for key, _ in claimed])
        raise ServiceUnavailable("Deduplication store unreachable; retry later.") from exc
    return claimed, duplicate_ids


def _hand_off(to_publish: list[dict[str, Any]], *, source: str) -> None:
    """Reserve room in the queue, then enqueue one task; raises ServiceUnavailable with nothing reserved."""
    try:
        admitted = publisher_services.reserve_queue_capacity(
            count=len(to_publish), limit=settings.INGEST_MAX_QUEUE_DEPTH
        )
    except Exception as exc:
        raise ServiceUnavailable("The queue is unreachable; retry later.") from exc
    if not admitted:
        metrics.EVENTS_REJECTED.labels(reason="backpressure").inc()
        raise ServiceUnavailable(
            f"The publish queue is full (limit {settings.INGEST_MAX_QUEUE_DEPTH} events); retry later."
        )
    try:
        publisher_services.enqueue_events(
            events=to_publish, source=source, accepted_at=time.time(), capacity_reserved=True
        )
    except Exception as exc:
        try:
            publisher_services.release_queue_capacity(count=len(to_publish))
        except Exception:
            logger.warning("could not release %d reserved queue slots", len(to_publish))
        logger.warning("enqueue failed, %d events refused: %r", len(to_publish), exc)
        raise ServiceUnavailable("The queue is unreachable; nothing was accepted, retry later.") from exc


def _confirm_marks(claimed: list[tuple[str, str]]) -> None:
    """The task is queued: turn the pending marks into real ones for INGEST_DEDUP_TTL."""
    if not claimed:
        return
    ttl = max(1, int(settings.INGEST_DEDUP_TTL))
    try:
        pipe = get_redis().pipeline(transaction=False)
        for key, event_id in claimed:
            pipe.set(key, event_id, ex=ttl)
        pipe.execute()
    except Exception:
        # The events are queued: accepted stands. Unconfirmed marks expire in PENDING_TTL seconds.
        logger.warning("could not confirm %d dedup marks", len(claimed))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else ""


def _wait_for_confirmation(undecided: list[tuple[int, str]]) -> dict[int, str]:
    """Another request holds these marks while it enqueues; wait briefly for it to confirm. If it never does
    (it failed), the mark will expire: ask the client to retry rather than calling it a duplicate."""
    redis = get_redis()
    waiting = list(undecided)
    found: dict[int, str] = {}
    for delay in PENDING_WAIT:
        time.sleep(delay)
        values = redis.mget([key for _, key in waiting])
        still = []
        for (index, key), value in zip(waiting, values, strict=True):
            text = _text(value)
            if text and not text.startswith(PENDING_PREFIX):
                found[index] = text
            else:  # still pending, or vanished (the other request failed and released it; a retry claims it)
                still.append((index, key))
        waiting = still
        if not waiting:
            return found
    raise ServiceUnavailable("The same event is being accepted by another request; retry shortly.")


def _release(keys: list[str]) -> None:
    if not keys:
        return
    try:
        get_redis().delete(*keys)
    except Exception:
        # Redis is what failed; pending marks expire in PENDING_TTL seconds at worst.
        logger.error("could not release %d dedup marks", len(keys))
