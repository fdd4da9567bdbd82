"""Replay: claim dead letters, publish their payloads, record what happened (the package docstring says how
a replay stays exactly-once per click)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.admin.models import CHANGE, LogEntry
from django.db import DatabaseError, transaction
from django.db.models import Max, Q
from django.utils import timezone

from events import tracecontext
from events.timefmt import utc_iso_ms
from publisher import breaker as breaker_module
from publisher import kafka_gateway, metrics
from publisher.errors import error_class
from publisher.models import DeadLetter, ReplayAttempt, ReplayJob
from publisher.publishing import Record, await_acks, build_records
from publisher.replay.filters import ReplayFilters
from publisher.replay.values import (
    Actor,
    KafkaUnavailable,
    ReplayOutcome,
    ReplayResult,
    ReplaySummary,
    Status,
    TokenBucket,
    UnknownTopic,
    Unrouted,
    chunk_size_for,
    header,
    settings_singleton,
)
from routing.services import current_routing

logger = logging.getLogger(__name__)

# Only the fields a replay needs: the list can be millions of rows with 32 KiB payloads.
_REPLAY_FIELDS = (
    "id", "event_id", "event_type", "original_topic", "payload", "headers", "format", "source",
    "status", "replay_count", "delivered_topics",
)  # fmt: skip


def _ingested_at(row: DeadLetter) -> float:
    """Keep the event's original ingestion time on the replayed record."""
    text = header(row, "ingested_at")
    if text:
        try:
            return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return time.time()


# The producer blocks up to KAFKA_PRODUCER_TIMEOUT on a topic that does not exist (auto-creation is off), so a
# replay checks the broker's topic list first and fails at once with a clear error. Cached per process.
_TOPICS_TTL = 30.0
_TOPICS_MIN_REFRESH = 2.0
_topics_lock = threading.Lock()
_topics_cache: tuple[float, frozenset[str]] | None = None


def _broker_topics(*, refresh: bool) -> frozenset[str] | None:
    global _topics_cache
    with _topics_lock:
        now = time.monotonic()
        cached = _topics_cache
        if cached is not None:
            age = now - cached[0]
            if age < _TOPICS_TTL and not (refresh and age >= _TOPICS_MIN_REFRESH):
                return cached[1]
        try:
            names = frozenset(kafka_gateway.list_topics())
        except Exception as exc:  # the broker is unwell: let the send itself report it
            logger.warning("replay: cannot list Kafka topics: %r", exc)
            return cached[1] if cached is not None else None
        _topics_cache = (now, names)
        return names


def _missing_topics(topics: Iterable[str]) -> set[str]:
    wanted = set(topics)
    known = _broker_topics(refresh=False)
    if known is None or wanted <= known:
        return set()
    known = _broker_topics(refresh=True)
    return set() if known is None else wanted - known


def release_stale_claims() -> int:
    """Give back rows a crashed replay left in 'replaying' (see the module docstring)."""
    cutoff = timezone.now() - timedelta(seconds=settings_singleton().claim_timeout_seconds)
    count = DeadLetter.objects.filter(status=Status.REPLAYING, replay_claimed_at__lt=cutoff).update(
        status=Status.PENDING, replay_claimed_at=None
    )
    if count:
        logger.warning("released %d dead letters left in 'replaying' by a replay that did not finish", count)
    return count


def _ensure_breaker_closed() -> None:
    if breaker_module.current_state() == "open":
        raise KafkaUnavailable("Kafka is unavailable (the publisher's circuit breaker is open); try again later.")


# ------------------------------------------------------------------------------------------------ replay core


@dataclass
class _Claimed:
    row: DeadLetter
    prior_status: str
    topics: tuple[str, ...] = ()
    records: list[Record] = field(default_factory=list)
    error: BaseException | None = None
    acked: list[str] = field(default_factory=list)


def _plan(claimed: Sequence[_Claimed], *, reroute: bool) -> None:
    """Choose each row's target topics and serialize its records (errors are kept on the row, not raised)."""
    snapshot = current_routing()
    now_text = utc_iso_ms().encode()
    for item in claimed:
        row = item.row
        event: dict[str, Any] = dict(row.payload) if isinstance(row.payload, dict) else {}
        delivered = set(row.delivered_topics or [])
        try:
            if not event:
                raise ValueError("the payload is not a JSON object")
            if reroute:
                topics = snapshot.route(event).topics
                if not topics:
                    raise Unrouted("no enabled routing rule matches this event now")
            else:
                topics = (row.original_topic,)
            item.topics = tuple(t for t in topics if t not in delivered)
            if not item.topics:
                continue  # everything was delivered by an earlier (partly failed) replay
            formats = {row.original_topic: row.format} | dict(snapshot.topic_formats)
            trace, link = _replay_trace(row)
            records, broken = build_records(
                [event],
                {0: list(item.topics)},
                formats,
                source=row.source or header(row, "source") or "",
                accepted_at=_ingested_at(row),
                traces=[trace],
            )
            if broken:
                raise broken[0].error or ValueError("cannot serialize the payload")
            extra = [("dlq_replay_count", str(row.replay_count + 1).encode()), ("dlq_replayed_at", now_text), *link]
            for record in records:
                record.headers = [*record.headers, *extra]
                record.header_block = None
            item.records = records
        except Exception as exc:
            item.error = exc


def _replay_trace(row: DeadLetter) -> tuple[tracecontext.TraceContext, list[tuple[str, bytes]]]:
    """A replay is an operation of its own, maybe days after the request: a new trace (the W3C spec's restart, so
    no tracestate), keeping the original's sampled flag, with the original traceparent in a `tracelink` header
    (what OpenTelemetry calls a span link) so a consumer can follow it back."""
    original = tracecontext.parse_traceparent(header(row, "traceparent"))
    if original is None:
        return tracecontext.generate(), []
    return tracecontext.generate(sampled=original.sampled), [("tracelink", original.traceparent.encode())]


def _send(claimed: Sequence[_Claimed]) -> None:
    """Send every planned record, then wait for every acknowledgement."""
    planned = [item for item in claimed if item.error is None and item.records]
    if not planned:
        return
    missing = _missing_topics(r.topic for item in planned for r in item.records)
    producer = kafka_gateway.get_producer()
    futures: list[tuple[_Claimed, Record, Any]] = []
    for item in planned:
        for record in item.records:
            if record.topic in missing:
                record.error = UnknownTopic(f"topic {record.topic!r} does not exist on the broker")
                continue
            try:
                future = producer.send(record.topic, key=record.key, value=record.value, headers=record.headers)
            except Exception as exc:  # too large, no metadata, buffer full: the client refused it
                record.error = exc
            else:
                futures.append((item, record, future))
    await_acks([(record, future) for _item, record, future in futures], timeout=float(settings.KAFKA_PRODUCER_TIMEOUT))
    for item in planned:
        item.acked = [r.topic for r in item.records if r.error is None]
        failed = [r for r in item.records if r.error is not None]
        if failed:
            item.error = failed[0].error
            for record in failed:
                if record.error is not None:
                    metrics.FAILED.labels(topic=record.topic, error_class=error_class(record.error)).inc()


def _finish(
    claimed: Sequence[_Claimed], *, actor: Actor, reroute: bool, job: ReplayJob | None, log_history: bool
) -> list[ReplayOutcome]:
    """Record the results: rows and replay attempts in one transaction (retried briefly: the records are
    published, and a row left 'replaying' would be replayed again after the claim timeout), then, for jobs and
    commands, the admin history."""
    now = timezone.now()
    cap = settings_singleton().max_replays
    outcomes: list[ReplayOutcome] = []
    attempts: list[ReplayAttempt] = []
    updates: list[tuple[int, dict[str, Any]]] = []
    for item in claimed:
        changes, outcome, attempt = _result_of(item, actor=actor, reroute=reroute, job=job, now=now, cap=cap)
        updates.append((item.row.pk, changes))
        outcomes.append(outcome)
        attempts.append(attempt)
    _save_results(updates, attempts)
    if log_history and actor.user is not None:
        try:
            log_outcomes(user_id=actor.user.pk, rows=[item.row for item in claimed], outcomes=outcomes, via=actor.via)
        except DatabaseError:  # the replay attempts above are the record; don't fail the replay for the history
            logger.exception("could not write the admin history of %d replays", len(outcomes))
    for outcome in outcomes:
        log = logger.info if outcome.ok else logger.warning
        log(
            "dead letter %s %s",
            outcome.dead_letter_id,
            outcome.result,
            extra={"event": "dlq_replay", "result": str(outcome.result), "actor": actor.name, "via": actor.via},
        )
    return outcomes


def _result_of(
    item: _Claimed, *, actor: Actor, reroute: bool, job: ReplayJob | None, now: datetime, cap: int
) -> tuple[dict[str, Any], ReplayOutcome, ReplayAttempt]:
    """One claimed row's result: the row's changes, the outcome reported to the caller, the attempt recorded."""
    row = item.row
    count = row.replay_count + 1
    changes: dict[str, Any] = {
        "replay_count": count,
        "delivered_topics": list(dict.fromkeys([*(row.delivered_topics or []), *item.acked])),
        "replay_claimed_at": None,
        "updated_at": now,
    }
    if item.error is None:
        changes |= {"status": Status.REPLAYED, "replayed_at": now, "replayed_by": actor.user}
        result = ReplayResult.REPLAYED
        klass = message = ""
    else:
        klass = error_class(item.error)
        message = str(item.error)[:4000] or klass
        quarantine = count >= cap or item.prior_status == Status.QUARANTINED
        changes |= {
            "status": Status.QUARANTINED if quarantine else Status.PENDING,
            "error_class": klass[:128],
            "error_message": message,
            "last_failed_at": now,
        }
        result = ReplayResult.QUARANTINED if quarantine else ReplayResult.FAILED
    outcome = ReplayOutcome(row.pk, result, item.topics, f"{klass}: {message}" if klass else "")
    attempt = ReplayAttempt(
        dead_letter_id=row.pk,
        user=actor.user,
        actor=actor.name[:150],
        via=actor.via,
        job=job,
        at=now,
        result=str(result),
        rerouted=reroute,
        topics=list(item.topics),
        error_class=klass[:128],
        error=message,
    )
    return changes, outcome, attempt


def _save_results(updates: Sequence[tuple[int, dict[str, Any]]], attempts: Sequence[ReplayAttempt]) -> None:
    """Rows and attempts in one transaction, tried three times outside a caller's transaction."""
    for attempt_number in range(1, 4):
        try:
            with transaction.atomic():
                for pk, changes in updates:
                    DeadLetter.objects.filter(pk=pk, status=Status.REPLAYING).update(**changes)
                ReplayAttempt.objects.bulk_create(attempts)
            return
        except DatabaseError:
            if attempt_number == 3 or transaction.get_connection().in_atomic_block:
                raise
            logger.warning("could not record %d replay results; retrying", len(updates), exc_info=True)
            time.sleep(0.5 * 2**attempt_number)


def log_outcomes(*, user_id: Any, rows: Sequence[DeadLetter], outcomes: Sequence[ReplayOutcome], via: str) -> None:
    """Admin history entries (one per row, written in one INSERT per distinct message)."""
    by_message: dict[str, list[DeadLetter]] = {}
    rows_by_id = {row.pk: row for row in rows}
    for outcome in outcomes:
        row = rows_by_id.get(outcome.dead_letter_id)
        if row is not None:
            by_message.setdefault(f"[{via}] {outcome.describe()}", []).append(row)
    for message, group in by_message.items():
        LogEntry.objects.log_actions(user_id=user_id, queryset=group, action_flag=CHANGE, change_message=message)


def _process(
    claimed: list[_Claimed], *, actor: Actor, reroute: bool, job: ReplayJob | None = None, log_history: bool
) -> list[ReplayOutcome]:
    try:
        _plan(claimed, reroute=reroute)
        _send(claimed)
    except Exception as exc:  # never leave claimed rows behind: record the failure
        logger.exception("replay failed unexpectedly")
        for item in claimed:
            if item.error is None:
                item.error = exc
    return _finish(claimed, actor=actor, reroute=reroute, job=job, log_history=log_history)


def _claim_chunk(where: Q, *, limit: int) -> list[_Claimed]:
    """Claim up to `limit` pending rows matching `where`, oldest first; rows locked by others are skipped."""
    now = timezone.now()
    with transaction.atomic():
        rows = list(
            DeadLetter.objects.select_for_update(skip_locked=True)
            .filter(where, status=Status.PENDING)
            .order_by("id")
            .only(*_REPLAY_FIELDS)[:limit]
        )
        if rows:
            DeadLetter.objects.filter(pk__in=[row.pk for row in rows]).update(
                status=Status.REPLAYING, replay_claimed_at=now, updated_at=now
            )
    return [_Claimed(row=row, prior_status=Status.PENDING) for row in rows]


# ------------------------------------------------------------------------------------------------ public API


def replay_one(
    *, dead_letter_id: int, actor: Actor, reroute: bool = False, expected_replay_count: int | None = None
) -> ReplayOutcome:
    """Replay one dead letter (pending or quarantined). `expected_replay_count` is what the operator saw: if
    someone replayed it since, nothing happens. Raises KafkaUnavailable while the breaker is open."""
    release_stale_claims()
    row = DeadLetter.objects.only("id", "status", "replay_count").filter(pk=dead_letter_id).first()
    if row is None:
        return ReplayOutcome(dead_letter_id, ReplayResult.SKIPPED, error="it no longer exists")
    seen = row.replay_count if expected_replay_count is None else expected_replay_count
    if row.status not in (Status.PENDING, Status.QUARANTINED):
        return ReplayOutcome(dead_letter_id, ReplayResult.SKIPPED, error=_status_note(row.status))
    if row.replay_count != seen:
        return ReplayOutcome(dead_letter_id, ReplayResult.SKIPPED, error=_changed_note(seen, row.replay_count))
    _ensure_breaker_closed()
    now = timezone.now()
    # The compare-and-set: of two concurrent clicks, exactly one UPDATE matches.
    claimed = DeadLetter.objects.filter(pk=dead_letter_id, status=row.status, replay_count=seen).update(
        status=Status.REPLAYING, replay_claimed_at=now, updated_at=now
    )
    if not claimed:
        current = DeadLetter.objects.only("status", "replay_count").filter(pk=dead_letter_id).first()
        if current is None:
            note = "it no longer exists"
        elif current.status not in (Status.PENDING, Status.QUARANTINED):
            note = _status_note(current.status)
        else:
            note = _changed_note(seen, current.replay_count)
        return ReplayOutcome(dead_letter_id, ReplayResult.SKIPPED, error=note)
    # Read the payload after claiming: an edit saved a moment ago is what gets published.
    fresh = DeadLetter.objects.only(*_REPLAY_FIELDS).get(pk=dead_letter_id)
    return _process([_Claimed(fresh, prior_status=row.status)], actor=actor, reroute=reroute, log_history=False)[0]


def _status_note(status: str) -> str:
    if status == Status.REPLAYING:
        return "another replay of this entry is in progress"
    return f"it is already {status}"


def _changed_note(seen: int, now: int) -> str:
    return f"it was replayed by someone else meanwhile (replay count {seen} -> {now}); reload and check"


def replay_many(
    *,
    dead_letter_ids: Sequence[int],
    actor: Actor,
    reroute: bool = False,
    rate: float | None = None,
    log_history: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> ReplaySummary:
    """Replay the selected pending rows, paced at `rate` events/s (default: the settings' replay_rate).
    Rows that are not pending (quarantined, replayed, discarded, being replayed) are skipped. With
    `log_history` each row gets an admin history entry (the admin passes False and logs itself)."""
    release_stale_claims()
    _ensure_breaker_closed()
    rate = rate or settings_singleton().replay_rate
    bucket = TokenBucket(rate)
    summary = ReplaySummary()
    ids = list(dict.fromkeys(int(i) for i in dead_letter_ids))
    step = chunk_size_for(rate)
    for start in range(0, len(ids), step):
        if should_stop is not None and should_stop():
            break
        chunk = ids[start : start + step]
        claimed = _claim_chunk(Q(pk__in=chunk), limit=len(chunk))
        taken = {item.row.pk for item in claimed}
        if claimed:
            bucket.acquire(len(claimed))
            summary.extend(_process(claimed, actor=actor, reroute=reroute, log_history=log_history))
        for pk in chunk:
            if pk not in taken:
                summary.add(ReplayOutcome(pk, ReplayResult.SKIPPED, error="not pending"))
    return summary


@dataclass
class FilterRun:
    summary: ReplaySummary
    cursor: int
    finished: bool  # nothing left to do (or the limit was reached)
    stopped: bool  # should_stop said so


def replay_by_filter(
    *,
    filters: ReplayFilters,
    actor: Actor,
    rate: float,
    limit: int | None = None,
    reroute: bool = False,
    cursor: int = 0,
    max_id: int | None = None,
    deadline: float | None = None,
    job: ReplayJob | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_chunk: Callable[[ReplaySummary, int], None] | None = None,
) -> FilterRun:
    """Replay pending rows matching `filters` in id order, paced at `rate` events/s, starting after `cursor`.
    Stops when done, at `limit` rows, when `should_stop()` is true (checked between chunks) or at `deadline`
    (time.monotonic). `on_chunk(chunk_summary, cursor)` reports progress. Raises KafkaUnavailable when the
    breaker is open before a chunk (what was done so far is already recorded)."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    release_stale_claims()
    if max_id is None:
        max_id = DeadLetter.objects.aggregate(m=Max("id"))["m"] or 0
    bucket = TokenBucket(rate)
    step = chunk_size_for(rate)
    summary = ReplaySummary()
    where = filters.q() & Q(pk__lte=max_id)
    while True:
        remaining = None if limit is None else limit - summary.done
        if remaining is not None and remaining <= 0:
            return FilterRun(summary, cursor, finished=True, stopped=False)
        if should_stop is not None and should_stop():
            return FilterRun(summary, cursor, finished=False, stopped=True)
        if deadline is not None and time.monotonic() >= deadline:
            return FilterRun(summary, cursor, finished=False, stopped=False)
        _ensure_breaker_closed()
        size = step if remaining is None else min(step, remaining)
        bucket.acquire(size)
        claimed = _claim_chunk(where & Q(pk__gt=cursor), limit=size)
        if not claimed:
            return FilterRun(summary, cursor, finished=True, stopped=False)
        outcomes = _process(claimed, actor=actor, reroute=reroute, job=job, log_history=True)
        chunk = ReplaySummary()
        chunk.extend(outcomes)
        summary.extend(outcomes)
        cursor = max(item.row.pk for item in claimed)
        if on_chunk is not None:
            on_chunk(chunk, cursor)
