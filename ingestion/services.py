"""Accepting events: dedup marks in Redis, backpressure, and the hand-off to the publisher.

An event is answered `accepted` only once its task is in the queue; if the enqueue fails the dedup marks
are released, so the client's retry is accepted and nothing is half-accepted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from config.redis import get_redis, script
from events import tracecontext
from events.schema import DEDUP_PREFIX, ValidatedEvent
from events.tracecontext import TraceContext
from ingestion import metrics
from ingestion.group_commit import GroupCommit, GroupCommits
from publisher import services as publisher_services
from publisher.metrics import count_each

logger = logging.getLogger(__name__)

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


def event_receipt(*, event_id: str, owner: str) -> dict[str, Any] | None:
    """What became of `event_id` (canonical UUID text) if the API key with prefix `owner` may read it, else None."""
    try:
        receipt = publisher_services.event_receipt(event_id=event_id, owner=owner)
    except Exception as exc:
        logger.warning("receipt of %s unreadable: %r", event_id, exc)
        raise ServiceUnavailable("The receipt store is unreachable; retry later.") from exc
    return None if receipt is None else receipt.as_dict()


_arrived: ContextVar[float | None] = ContextVar("ingest_request_arrived", default=None)


@contextmanager
def request_arrived(*, at: float) -> Iterator[None]:
    """The request served inside reached this web process at `at` (time.monotonic()). INGEST_MAX_QUEUE_DELAY then
    counts from there: what the request already waited (at the load-shedding gate, being read and parsed) is taken
    from what its events may wait in the queue, so an accepted event's whole wait stays within the limit."""
    token = _arrived.set(at)
    try:
        yield
    finally:
        _arrived.reset(token)


def _delay_budget() -> float:
    """What is left of INGEST_MAX_QUEUE_DELAY for the current request's events to wait in the queue."""
    arrived = _arrived.get()
    limit = float(settings.INGEST_MAX_QUEUE_DELAY)
    return limit if arrived is None else max(0.0, limit - (time.monotonic() - arrived))


def check_backpressure() -> None:
    """Refuse new work early while the queue is over INGEST_MAX_QUEUE_DEPTH events or a new event would wait
    longer than INGEST_MAX_QUEUE_DELAY (the admission holds both exactly: _capacity). One read of Redis, cached
    0.2 s per process."""
    try:
        depth = publisher_services.queue_depth()
        delay = publisher_services.queue_delay()
    except Exception as exc:
        raise ServiceUnavailable("The queue is unreachable; retry later.") from exc
    if depth > settings.INGEST_MAX_QUEUE_DEPTH:
        metrics.EVENTS_REJECTED.labels(reason="backpressure").inc()
        raise ServiceUnavailable(
            f"The publish queue holds {depth} events (limit {settings.INGEST_MAX_QUEUE_DEPTH}); retry later."
        )
    limit = settings.INGEST_MAX_QUEUE_DELAY
    if limit <= 0:
        return
    budget = _delay_budget()
    if delay > budget:
        metrics.EVENTS_REJECTED.labels(reason="queue_delay").inc()
        wait = "indefinitely (no worker finishes tasks)" if delay == float("inf") else f"about {delay:.2f} s"
        left = "" if budget == limit else f", {budget:.2f} s of it left for this request"
        raise ServiceUnavailable(f"New events would wait {wait} for a worker (limit {limit:g} s{left}); retry later.")
    # What the admission would refuse after the body is parsed and validated, refused before: at capacity by the
    # same reading. A refusal after validation costs the web tier a whole batch's parsing, CPU the workers then
    # lack, which deepens the overload it answers.
    capacity = publisher_services.queue_capacity_for_delay(delay=budget)
    if capacity is not None and depth >= capacity:
        raise _Capacity(capacity, by_delay=True).refusal()


def _admission_refused(capacity: _Capacity) -> ServiceUnavailable:
    """The admission found no room: the next check_backpressure in this process reads the queue afresh instead of
    from its cached reading, so the requests already in flight are refused before they are parsed."""
    publisher_services.forget_queue_reading()
    return capacity.refusal()


@dataclass(frozen=True)
class _Capacity:
    """How many events the queue may hold once a group is admitted, and which setting says so."""

    limit: int
    by_delay: bool  # INGEST_MAX_QUEUE_DELAY (what the busy workers finish in that time), not INGEST_MAX_QUEUE_DEPTH

    def refusal(self) -> ServiceUnavailable:
        if self.by_delay:
            metrics.EVENTS_REJECTED.labels(reason="queue_delay").inc()
            return ServiceUnavailable(
                f"New events would wait more than {settings.INGEST_MAX_QUEUE_DELAY:g} s for a worker (limit "
                f"{settings.INGEST_MAX_QUEUE_DELAY:g} s; {self.limit} events queued at most); retry later."
            )
        metrics.EVENTS_REJECTED.labels(reason="backpressure").inc()
        return ServiceUnavailable(
            f"The publish queue is full (limit {settings.INGEST_MAX_QUEUE_DEPTH} events); retry later."
        )


def _capacity(count: int) -> _Capacity:
    """INGEST_MAX_QUEUE_DEPTH, or fewer while every worker is busy and INGEST_MAX_QUEUE_DELAY is on: the events
    they finish within what is left of that delay for this request (_delay_budget), so the reservation (atomic
    across processes) holds the delay exactly rather than from a reading 0.2 s old. At least `count`: a group
    larger than that still goes into an empty queue."""
    depth_limit = settings.INGEST_MAX_QUEUE_DEPTH
    if settings.INGEST_MAX_QUEUE_DELAY <= 0:
        return _Capacity(depth_limit, by_delay=False)
    try:
        by_delay = publisher_services.queue_capacity_for_delay(delay=_delay_budget())
    except Exception:  # Redis is down: the admission itself will say so
        by_delay = None
    if by_delay is None or max(by_delay, count) >= depth_limit:
        return _Capacity(depth_limit, by_delay=False)
    return _Capacity(max(by_delay, count), by_delay=True)


PENDING_PREFIX = "p:"
PENDING_TTL = 30
PENDING_WAIT = (0.02, 0.05, 0.1)


@dataclass(frozen=True, slots=True)
class _Request:
    """One request's events and its trace context, as it waits in an admission group."""

    events: Sequence[tuple[int, ValidatedEvent]]
    trace: TraceContext


def accept_events(
    *, events: Sequence[tuple[int, ValidatedEvent]], source: str, trace: TraceContext | None = None, owner: str = ""
) -> Outcome:
    """Dedup, then enqueue the new events. Raises ServiceUnavailable without side effects left. `owner`, the
    sending API key's prefix, is who may read the events' receipts (GET /api/v1/events/<id>).

    Requests from the same API key accepted at the same time in this process are admitted together (one
    round of Redis work, one task): see ingestion.group_commit. A request's answer still waits for its own events to be
    queued, and a group is admitted or refused as a whole. Each event keeps its request's `trace` (W3C trace
    context; a new trace when None) inside the shared task.
    """
    if not events:
        return Outcome()
    return _admissions.submit(
        _group_key(source=source, owner=owner), _Request(events, trace or tracecontext.generate())
    )


def _group_key(*, source: str, owner: str) -> str:
    return f"{owner}\x00{source}"  # a prefix is letters and digits: the first NUL ends it


@contextmanager
def admission_expected(*, source: str, owner: str = "") -> Iterator[None]:
    """This thread will ask to accept events of `source` shortly (its request is being read and validated): a
    group of that source being formed meanwhile waits for it, up to INGEST_GROUP_WAIT. Requests that are not
    announced (a sequential client's next one) never make anyone wait."""
    with _admissions.get(_group_key(source=source, owner=owner)).expecting():
        yield


def _admit_group(group: list[_Request], *, source: str, owner: str = "") -> list[Outcome]:
    """Admit every request of the group as one: one dedup check, one reservation, one task (see _accept).
    A dedup key repeated across requests of the group is a duplicate of its first occurrence, as inside a batch."""
    if len(group) == 1:
        only = group[0]
        return [_accept(only.events, source=source, owner=owner, traces=[only.trace] * len(only.events))]
    flat = list(enumerate(ev for request in group for _, ev in request.events))
    traces = [request.trace for request in group for _ in request.events]
    combined = _accept(flat, source=source, owner=owner, traces=traces).statuses
    outcomes: list[Outcome] = []
    position = 0
    for request in group:
        events = request.events
        outcome = Outcome()
        statuses = outcome.statuses
        for index, _ in events:
            status = statuses[index] = combined[position]
            position += 1
            if status[1] == DUPLICATE:
                outcome.duplicates += 1
        outcome.accepted = len(events) - outcome.duplicates
        outcomes.append(outcome)
    return outcomes


def _admission_for(key: str) -> GroupCommit[_Request, Outcome]:
    # A group stops at INGEST_MAX_BATCH events (one request may exceed that alone), so a task is never bigger
    # than one full batch and memory stays bounded under load. INGEST_GROUP_WAIT lets a leader wait for the
    # requests of its source this process is already reading (admission_expected), so groups grow.
    owner, _, source = key.partition("\x00")
    return GroupCommit(
        lambda group: _admit_group(group, source=source, owner=owner),
        weight=lambda request: len(request.events),
        max_weight=lambda: settings.INGEST_MAX_BATCH,
        linger=lambda: settings.INGEST_GROUP_WAIT,
        hold=_backlog_hold,
    )


def _backlog_hold() -> float:
    """INGEST_BACKLOG_GROUP_WAIT while the workers are behind (INGEST_BACKLOG_GROUP_TASKS or more publish tasks
    that no worker has taken yet), else 0. Then accepted events wait in the queue anyway, so a leader that waits
    for companions costs them little, and the larger tasks it makes cost the workers less CPU per event (per-task
    costs shared): this is what lets them catch up instead of falling further behind."""
    threshold = settings.INGEST_BACKLOG_GROUP_TASKS
    if threshold <= 0:
        return 0.0
    try:
        waiting = publisher_services.waiting_tasks()
    except Exception:  # Redis is down: the admission itself will say so
        return 0.0
    return settings.INGEST_BACKLOG_GROUP_WAIT if waiting is not None and waiting >= threshold else 0.0


_admissions: GroupCommits[_Request, Outcome] = GroupCommits(_admission_for)


def _accept(
    events: Sequence[tuple[int, ValidatedEvent]], *, source: str, owner: str, traces: Sequence[TraceContext]
) -> Outcome:
    """`traces`: each event's trace context, by position in `events`."""
    if publisher_services.can_enqueue_guarded():
        outcome = _accept_atomically(events, source=source, owner=owner, traces=traces)
    else:
        outcome = _accept_in_steps(events, source=source, owner=owner, traces=traces)
    if outcome.duplicates:
        _note_duplicates(events, outcome, owner=owner)
    return outcome


def _note_duplicates(events: Sequence[tuple[int, ValidatedEvent]], outcome: Outcome, *, owner: str) -> None:
    """A duplicate sent under an event id of its own gets a receipt naming the original, and the original's
    receipt lets this key read it (never raises)."""
    duplicates = [
        (str(ev.data["event_id"]), outcome.statuses[index][0])
        for index, ev in events
        if outcome.statuses[index][1] == DUPLICATE
    ]
    publisher_services.note_duplicates(duplicates=duplicates, owner=owner, accepted_at=time.time())


GUARDED_ROUNDS = 3


def _accept_atomically(
    events: Sequence[tuple[int, ValidatedEvent]], *, source: str, owner: str, traces: Sequence[TraceContext]
) -> Outcome:
    """One atomic step on Redis: the marks are set, capacity reserved and the task queued together, or nothing
    is. Marks already held make their events duplicates; the rest are tried again (a second round trip only
    when a group holds a duplicate)."""
    duplicate_ids: dict[int, str] = {}
    repeat_of: dict[int, int] = {}  # a dedup key seen earlier in the group: index -> its first occurrence
    first_by_key: dict[str, int] = {}
    # (index, data, guard key or None, trace) of the events to try, in order; one pass builds it for the first
    # round.
    candidates: list[tuple[int, dict[str, Any], str | None, TraceContext]] = []
    for (index, ev), trace in zip(events, traces, strict=True):
        key = None if ev.dedup_key is None else DEDUP_PREFIX + ev.dedup_key
        if key is not None:
            first = first_by_key.setdefault(key, index)
            if first != index:
                repeat_of[index] = first
                continue
        candidates.append((index, ev.data, key, trace))
    ttl = max(1, int(settings.INGEST_DEDUP_TTL))
    capacity = _capacity(len(candidates))
    for _ in range(GUARDED_ROUNDS):
        if duplicate_ids:
            candidates = [c for c in candidates if c[0] not in duplicate_ids]
        if not candidates:
            break
        guarded = [(index, key, data) for index, data, key, _ in candidates if key is not None]
        try:
            result = publisher_services.enqueue_events_guarded(
                events=[data for _, data, _, _ in candidates],
                traces=[trace for _, _, _, trace in candidates],
                source=source,
                accepted_at=time.time(),
                guards=[(key, str(data["event_id"])) for _, key, data in guarded],
                guard_ttl=ttl,
                capacity_limit=capacity.limit,
                min_replicas=settings.INGEST_REDIS_MIN_REPLICAS,
                replica_wait=settings.INGEST_REDIS_REPLICA_WAIT,
                receipt_owner=owner,
            )
        except Exception as exc:
            logger.warning("enqueue failed, %d events refused: %r", len(candidates), exc)
            raise ServiceUnavailable("The queue is unreachable; nothing was accepted, retry later.") from exc
        if result.enqueued and result.replicas is not None:
            _require_replicas(result.replicas, count=len(candidates))
        if result.queue_full:
            raise _admission_refused(capacity)
        if result.enqueued:
            break
        undecided: list[tuple[int, str]] = []
        for position, holder in result.held.items():
            index, key, data = guarded[position]
            if holder.startswith(PENDING_PREFIX):  # a process admitting in steps holds it (see _accept_in_steps)
                undecided.append((index, key))
            else:
                duplicate_ids[index] = holder or str(data["event_id"])
        if undecided:
            duplicate_ids.update(_wait_for_confirmation(undecided))
    else:
        raise ServiceUnavailable("The same events are being accepted by other requests; retry shortly.")
    if repeat_of:
        event_ids = {index: str(ev.data["event_id"]) for index, ev in events}
        for index, first in repeat_of.items():
            duplicate_ids[index] = duplicate_ids.get(first, event_ids[first])
    return _record_outcome(events, duplicate_ids)


def _record_outcome(events: Sequence[tuple[int, ValidatedEvent]], duplicate_ids: dict[int, str]) -> Outcome:
    outcome = Outcome()
    statuses = outcome.statuses
    accepted_types: list[str] = []
    for index, ev in events:
        if index in duplicate_ids:
            statuses[index] = (duplicate_ids[index], DUPLICATE)
        else:
            statuses[index] = (str(ev.data["event_id"]), ACCEPTED)
            accepted_types.append(ev.data["event_type"])
    outcome.duplicates = len(events) - len(accepted_types)
    outcome.accepted = len(accepted_types)
    count_each(metrics.EVENTS_ACCEPTED, "event_type", accepted_types)
    if outcome.duplicates:
        metrics.EVENTS_DUPLICATE.inc(outcome.duplicates)
    return outcome


def _accept_in_steps(
    events: Sequence[tuple[int, ValidatedEvent]], *, source: str, owner: str, traces: Sequence[TraceContext]
) -> Outcome:
    """When Celery's broker is not the project's Redis: claim pending marks, hand off one task, confirm the
    marks (the pending marks are released if the hand-off fails, so nothing is half-accepted)."""
    claimed, duplicate_ids = _claim_marks(events)
    kept = [(ev.data, trace) for (index, ev), trace in zip(events, traces, strict=True) if index not in duplicate_ids]
    to_publish = [data for data, _ in kept]
    if to_publish:
        try:
            _hand_off(to_publish, source=source, owner=owner, traces=[trace for _, trace in kept])
        except ServiceUnavailable:
            _release([key for key, _ in claimed])
            raise
    _confirm_marks(claimed)
    if to_publish and settings.INGEST_REDIS_MIN_REPLICAS > 0:
        try:
            replicas = publisher_services.wait_for_replicas(
                count=settings.INGEST_REDIS_MIN_REPLICAS, timeout=settings.INGEST_REDIS_REPLICA_WAIT
            )
        except Exception as exc:
            raise ServiceUnavailable(NOT_REPLICATED) from exc
        _require_replicas(replicas, count=len(to_publish))
    return _record_outcome(events, duplicate_ids)


# The task stays queued: if this primary survives it is published, and the client's retry of events with a dedup
# key (client event_id, attempt id) finds their marks and is answered `duplicate`; if a failover loses it, it
# loses the marks with it (one script, replicated as one), so the retry is accepted anew. Either way: once.
NOT_REPLICATED = (
    "Queued, but not yet confirmed by enough Redis replicas; retry: events already queued are answered duplicate."
)


def _require_replicas(replicas: int, *, count: int) -> None:
    """INGEST_REDIS_MIN_REPLICAS: answer 503 unless that many replicas hold the queued task."""
    if replicas >= settings.INGEST_REDIS_MIN_REPLICAS:
        return
    metrics.EVENTS_REJECTED.labels(reason="not_replicated").inc()
    logger.warning(
        "%d events queued but held by %d of %d required Redis replicas: answered 503",
        count,
        replicas,
        settings.INGEST_REDIS_MIN_REPLICAS,
        extra={"event": "not_replicated"},
    )
    raise ServiceUnavailable(NOT_REPLICATED)


# Claim a pending dedup mark per key atomically across processes (SET NX), and say who holds the others:
# 1 where this call claimed the key, else the value that holds it. One round trip per group, however many
# events, and no per-command client overhead.
_CLAIM = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, ARGV[i + 1], 'NX', 'EX', ARGV[1]) then
    out[i] = 1
  else
    out[i] = redis.call('GET', key) or ''
  end
end
return out
"""

_CONFIRM = """
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[i + 1], 'EX', ARGV[1])
end
return #KEYS
"""


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
        replies = script(_CLAIM)(
            keys=[key for _, _, key in keyed],
            args=[PENDING_TTL, *(PENDING_PREFIX + ev.data["event_id"] for _, ev, _ in keyed)],
        )
        mine = {ev.data["event_id"] for (_, ev, _), reply in zip(keyed, replies, strict=True) if reply == 1}
        undecided: list[tuple[int, str]] = []
        for (index, ev, key), reply in zip(keyed, replies, strict=True):
            if reply == 1:
                claimed.append((key, ev.data["event_id"]))
                continue
            holder = _text(reply)
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


def _hand_off(to_publish: list[dict[str, Any]], *, source: str, owner: str, traces: Sequence[TraceContext]) -> None:
    """Reserve room in the queue, then enqueue one task; raises ServiceUnavailable with nothing reserved."""
    capacity = _capacity(len(to_publish))
    try:
        admitted = publisher_services.reserve_queue_capacity(count=len(to_publish), limit=capacity.limit)
    except Exception as exc:
        raise ServiceUnavailable("The queue is unreachable; retry later.") from exc
    if not admitted:
        raise _admission_refused(capacity)
    try:
        publisher_services.enqueue_events(
            events=to_publish,
            source=source,
            accepted_at=time.time(),
            traces=traces,
            capacity_reserved=True,
            receipt_owner=owner,
        )
    except Exception as exc:
        publisher_services.release_queue_capacity(count=len(to_publish))  # never raises; a failure is logged
        logger.warning("enqueue failed, %d events refused: %r", len(to_publish), exc)
        raise ServiceUnavailable("The queue is unreachable; nothing was accepted, retry later.") from exc


def _confirm_marks(claimed: list[tuple[str, str]]) -> None:
    """The task is queued: turn the pending marks into real ones for INGEST_DEDUP_TTL."""
    if not claimed:
        return
    ttl = max(1, int(settings.INGEST_DEDUP_TTL))
    try:
        script(_CONFIRM)(keys=[key for key, _ in claimed], args=[ttl, *(event_id for _, event_id in claimed)])
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
