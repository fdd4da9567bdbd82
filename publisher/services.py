"""Publisher services: the API other code uses (ingestion hands work over through here, never via internals).

enqueue_events(events=..., source=..., accepted_at=...)   one Celery task for a request's (or a group's) events
enqueue_events_guarded(..., guards=..., capacity_limit=...)   the same, atomically with guard keys and capacity
publish_batch(events=..., source=...) / publish_event(event=..., source=...)   synchronous, in-process
event_receipt(event_id=..., owner=...)                    what became of an event (publisher.receipts)
note_duplicates(duplicates=..., owner=..., accepted_at=...) receipts of duplicates sent under ids of their own
queue_depth()                                             events waiting for a worker
queue_delay()                                             how long an event enqueued now would wait
queue_capacity_for_delay(delay=...)                       queued events new ones can wait behind for `delay` s
waiting_tasks()                                           publish tasks no worker has taken yet
wait_for_replicas(count=..., timeout=...)                 Redis replicas holding what was enqueued so far
ensure_topics(partitions=..., replication_factor=...)     create configured topics + dlq.events
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from django.db import DatabaseError

from events import tracecontext
from events.tracecontext import TraceContext
from fastpaths import celery_handoff
from fastpaths.celery_handoff import GuardedResult
from publisher import handoff, kafka_gateway, publishing, queue, receipts
from publisher.publishing import BatchResult, PublishDeferred
from publisher.receipts import Receipt
from publisher.tasks import publish_events
from routing.services import topic_names

logger = logging.getLogger(__name__)


def ensure_topics(*, partitions: int, replication_factor: int | None = None) -> kafka_gateway.EnsureTopicsResult:
    """Create every configured topic, every topic named in the routing table, and dlq.events if missing.
    `replication_factor` None: min(3, live brokers) (kafka_gateway.replication_for)."""
    try:
        routed = topic_names()
    except DatabaseError:  # not migrated yet: the configured topics are enough
        routed = []
    return kafka_gateway.ensure_topics(
        names=kafka_gateway.configured_topics() + routed, partitions=partitions, replication_factor=replication_factor
    )


def topic_exists(*, name: str) -> bool:
    """Whether the cluster has this topic (asks the broker; raises if it can't be reached)."""
    return name in kafka_gateway.list_topics(request_timeout_ms=5000)


def reserve_queue_capacity(*, count: int, limit: int) -> bool:
    """Admission control: count `count` events as queued if the queue stays within `limit` (atomic)."""
    return queue.reserve(count, limit=limit)


def release_queue_capacity(*, count: int) -> None:
    queue.release(count)


def can_enqueue_guarded() -> bool:
    """Whether enqueue_events_guarded can be used: the fast path `celery_handoff` is on and Celery's broker is
    REDIS_URL's own Redis database. Otherwise callers admit in steps around enqueue_events (apply_async)."""
    return celery_handoff.enabled() and handoff.queue_for(publish_events.name) is not None


def enqueue_events_guarded(
    *,
    events: list[dict[str, Any]],
    source: str,
    accepted_at: float,
    traces: Sequence[TraceContext] | None = None,
    guards: Sequence[tuple[str, str]],
    guard_ttl: int,
    capacity_limit: int,
    min_replicas: int = 0,
    replica_wait: float = 0.0,
    receipt_owner: str | None = None,
) -> GuardedResult:
    """One atomic step: if none of the `guards` keys exists and the queue stays within `capacity_limit` events,
    enqueue one publish task for `events`, count them as queued and set every guard (key, value) for
    `guard_ttl` seconds, and (with `receipt_owner`, the API key's prefix, and INGEST_RECEIPTS) start every
    event's receipt as queued. Otherwise nothing is done and the result says why: which guards are already held
    (by what value), or that the queue is full. Raises if Redis cannot be reached (then nothing was done, or
    everything was). With `min_replicas`, it then waits up to `replica_wait` seconds for that many Redis replicas
    to hold the task and its guards, and says in `replicas` how many did (the task stays queued either way).
    `traces`: each event's W3C trace context (one new trace for all when None)."""
    queue_name = handoff.queue_for(publish_events.name)
    if queue_name is None or not celery_handoff.enabled():
        raise RuntimeError(
            "enqueue_events_guarded needs the celery_handoff fast path and Celery's broker to be REDIS_URL"
        )
    message = celery_handoff.task_message(
        task_name=publish_events.name,
        queue_name=queue_name,
        kwargs=_task_kwargs(events=events, source=source, accepted_at=accepted_at, traces=traces),
        kwargsrepr=f"<{len(events)} events>",
        headers=queue.message_headers(events=len(events), due_at=time.time()),
    )
    stamped = receipt_owner is not None and receipts.enabled()
    return celery_handoff.enqueue_guarded(
        message=message,
        queue_name=queue_name,
        count=len(events),
        limit=capacity_limit,
        guards=guards,
        guard_ttl=guard_ttl,
        min_replicas=min_replicas,
        replica_wait=replica_wait,
        stamps=receipts.by_hash(event_ids=(event["event_id"] for event in events), at=accepted_at) if stamped else None,
        stamp_value=receipts.admission_value(owner=receipt_owner or "", accepted_at=accepted_at),
        stamp_expire_at=receipts.expire_at(accepted_at),
    )


def wait_for_replicas(*, count: int, timeout: float) -> int:
    """After an enqueue through Celery (enqueue_events): wait up to `timeout` seconds for `count` Redis replicas
    to hold everything written so far, the task included; returns how many did. Meaningful only when Celery's
    broker is REDIS_URL's Redis (settings refuse INGEST_REDIS_MIN_REPLICAS otherwise)."""
    return queue.wait_for_replicas(count, timeout=timeout)


def _task_kwargs(
    *, events: list[dict[str, Any]], source: str, accepted_at: float, traces: Sequence[TraceContext] | None
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"events": events, "source": source, "accepted_at": accepted_at}
    if traces is not None:
        kwargs["traces"] = tracecontext.pack(traces)  # runs: a few entries per task, not one per event
    return kwargs


def enqueue_events(
    *,
    events: list[dict[str, Any]],
    source: str,
    accepted_at: float,
    traces: Sequence[TraceContext] | None = None,
    capacity_reserved: bool = False,
    receipt_owner: str | None = None,
) -> None:
    """Hand an accepted request's events to the workers: one task for the whole batch. Raises if the broker
    (Redis) cannot take it, so the caller can refuse the request instead of half-accepting it. `traces`: each
    event's W3C trace context, carried to its Kafka records and the task's log lines (one new trace when None).
    With `receipt_owner` (and INGEST_RECEIPTS) the events' receipts are started first, and removed if the task
    could not be queued."""
    stamped = receipt_owner is not None and receipts.enabled()
    event_ids = [event["event_id"] for event in events]
    if stamped:
        # Before the task exists, so the worker's receipt writes always come after this one.
        receipts.stamp_queued(event_ids=event_ids, owner=receipt_owner or "", accepted_at=accepted_at)
    try:
        publish_events.apply_async(
            kwargs=_task_kwargs(events=events, source=source, accepted_at=accepted_at, traces=traces),
            argsrepr="",
            kwargsrepr=f"<{len(events)} events>",
            retry=False,
        )
    except Exception:
        if stamped:
            receipts.forget(event_ids=event_ids, accepted_at=accepted_at)
        raise
    if capacity_reserved:
        return
    try:
        queue.add(len(events))
    except Exception:  # the task is queued; a missed count only weakens backpressure a little
        logger.warning("could not count %d queued events", len(events))


def event_receipt(*, event_id: str, owner: str) -> Receipt | None:
    """What became of `event_id`, if the API key `owner` (its prefix) sent it or was answered `duplicate` of it;
    None otherwise (unknown, expired, someone else's: the caller cannot tell which)."""
    receipt = receipts.read(event_id=event_id)
    return receipt if receipt is not None and receipt.readable_by(owner) else None


def note_duplicates(*, duplicates: Sequence[tuple[str, str]], owner: str, accepted_at: float) -> None:
    """Receipts for duplicates sent under an event id of their own: (their event id, the original's)."""
    if receipts.enabled():
        receipts.note_duplicates(duplicates=duplicates, owner=owner, accepted_at=accepted_at)


def queue_depth() -> int:
    """Events accepted and not yet published (cached for 0.2 s per process)."""
    return queue.depth()


def forget_queue_reading() -> None:
    """This process's next queue_depth / queue_delay / queue_capacity_for_delay reads Redis afresh (after an
    admission found the queue fuller than the cached reading said)."""
    queue.forget_snapshot()


def queue_delay() -> float:
    """Seconds an event enqueued now would wait for a worker (publisher.queue.Snapshot.delay; inf when the
    workers are stalled); 0 when no task waits that no worker has taken, or when Celery's broker is not
    REDIS_URL's Redis. Read with queue_depth, in the same cached round trip."""
    return queue.snapshot().delay(time.time())


def queue_capacity_for_delay(*, delay: float) -> int | None:
    """The most events the queue may hold so that new ones wait at most `delay` seconds, while every worker is
    busy and their rate is measured; None otherwise (then only INGEST_MAX_QUEUE_DEPTH applies). Cached as
    queue_depth; pass it as the capacity limit of an admission to hold the delay exactly across processes."""
    return queue.snapshot().capacity_for_delay(delay)


def waiting_tasks() -> int | None:
    """Publish tasks that no worker has taken yet (each worker process holds up to its prefetch of tasks, so any
    here mean every worker is busy and has work lined up), cached for 0.2 s per process. None when Celery's
    broker is not REDIS_URL's Redis: that queue is not ours to read."""
    queue_name = handoff.queue_for(publish_events.name)
    return None if queue_name is None else queue.waiting_tasks(queue_name)


def publish_batch(*, events: list[dict[str, Any]], source: str = "internal") -> BatchResult:
    """Publish already-validated, normalized events now, in this process (no Celery), waiting for every
    acknowledgement. Raises PublishDeferred with what is still owed when Kafka is down (breaker open)."""
    return publishing.publish_events(events=events, source=source, accepted_at=time.time())


def publish_event(*, event: dict[str, Any], source: str = "internal") -> BatchResult:
    """publish_batch for one event."""
    return publish_batch(events=[event], source=source)


__all__ = [
    "BatchResult",
    "GuardedResult",
    "PublishDeferred",
    "Receipt",
    "can_enqueue_guarded",
    "enqueue_events",
    "enqueue_events_guarded",
    "ensure_topics",
    "event_receipt",
    "forget_queue_reading",
    "note_duplicates",
    "publish_batch",
    "publish_event",
    "queue_capacity_for_delay",
    "queue_delay",
    "queue_depth",
    "release_queue_capacity",
    "reserve_queue_capacity",
    "topic_exists",
    "wait_for_replicas",
    "waiting_tasks",
]
