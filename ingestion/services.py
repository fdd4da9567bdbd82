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

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


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
        raise ServiceUnavailable(
            "The queue is unreachable; retry later.", retry_after=settings.INGEST_RETRY_AFTER_SECONDS
        ) from exc
    if depth > settings.INGEST_MAX_QUEUE_DEPTH:
        metrics.EVENTS_REJECTED.labels(reason="backpressure").inc()
        raise ServiceUnavailable(
            f"The publish queue holds {depth} events (limit {settings.INGEST_MAX_QUEUE_DEPTH}); retry later.",
            retry_after=settings.INGEST_RETRY_AFTER_SECONDS,
        )


def accept_events(*, events: Sequence[tuple[int, ValidatedEvent]], source: str) -> Outcome:
    """Dedup, then enqueue the new events as one task. Raises ServiceUnavailable without side effects left."""
    outcome = Outcome()
    if not events:
        return outcome
    redis = get_redis()
    ttl = max(1, int(settings.INGEST_DEDUP_TTL))
    keyed = [(index, ev) for index, ev in events if ev.dedup_key is not None]
    claimed: list[str] = []
    try:
        if keyed:
            # SET NX claims a key atomically across processes; GET returns the id that holds it.
            pipe = redis.pipeline(transaction=False)
            for _, ev in keyed:
                key = DEDUP_PREFIX + str(ev.dedup_key)
                pipe.set(key, ev.data["event_id"], nx=True, ex=ttl)
                pipe.get(key)
            replies = pipe.execute()
        else:
            replies = []
    except Exception as exc:
        raise ServiceUnavailable(
            "Deduplication store unreachable; retry later.", retry_after=settings.INGEST_RETRY_AFTER_SECONDS
        ) from exc
    duplicate_ids: dict[int, str] = {}
    for n, (index, ev) in enumerate(keyed):
        if replies[2 * n]:
            claimed.append(DEDUP_PREFIX + str(ev.dedup_key))
        else:
            holder = replies[2 * n + 1]
            duplicate_ids[index] = holder.decode() if isinstance(holder, bytes) else str(ev.data["event_id"])
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
            publisher_services.enqueue_events(events=to_publish, source=source, accepted_at=time.time())
        except Exception as exc:
            _release(claimed)
            logger.warning("enqueue failed, %d events refused: %r", len(to_publish), exc)
            raise ServiceUnavailable(
                "The queue is unreachable; nothing was accepted, retry later.",
                retry_after=settings.INGEST_RETRY_AFTER_SECONDS,
            ) from exc
    for index, ev in events:
        if outcome.statuses[index][1] == ACCEPTED:
            metrics.EVENTS_ACCEPTED.labels(event_type=ev.data["event_type"]).inc()
    if outcome.duplicates:
        metrics.EVENTS_DUPLICATE.inc(outcome.duplicates)
    return outcome


def _release(keys: list[str]) -> None:
    if not keys:
        return
    try:
        get_redis().delete(*keys)
    except Exception:
        # Redis is what failed; the marks expire with INGEST_DEDUP_TTL at worst.
        logger.error("could not release %d dedup marks", len(keys))
