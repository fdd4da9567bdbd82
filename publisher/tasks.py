"""Celery tasks: thin wrappers that take plain JSON arguments and delegate to the publisher services."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, NoReturn

from celery import Task, shared_task
from celery.exceptions import Reject
from django.conf import settings

from config.logging import trace_scope
from config.redis import deferred_writes
from events import tracecontext
from events.tracecontext import TraceContext
from fastpaths import celery_lean_strategy
from publisher import poison, publishing, queue
from publisher.errors import DATABASE_OUTAGE_ERRORS
from publisher.progress import TaskProgress

logger = logging.getLogger(__name__)

PUBLISH_QUEUE = "publish"


def describe_arguments(kwargs: dict[str, Any] | None) -> str:
    """What the worker logs of a task's arguments: names and sizes, never the events (user ids, free text)."""
    parts = []
    for name, value in (kwargs or {}).items():
        if isinstance(value, list | dict):
            parts.append(f"{name}: <{len(value)} items>")
        elif isinstance(value, int | float | bool) or value is None:
            parts.append(f"{name}: {value!r}")
        else:
            parts.append(f"{name}: <{type(value).__name__}>")
    return "{" + ", ".join(parts) + "}"


class PublisherTask(Task):
    def apply_async(self, args: Any = None, kwargs: Any = None, *positional: Any, **options: Any) -> Any:
        """Task.apply_async; the message's log representation names the arguments, never the events, and its
        headers say how many events it holds and when it is due (publisher.queue), retries included."""
        options.setdefault("argsrepr", "()")
        options.setdefault("kwargsrepr", describe_arguments(kwargs))
        events = (kwargs or {}).get("events") if self.name == queue.PUBLISH_TASK else None
        accounting = queue.message_headers(
            events=len(events) if isinstance(events, list) else None, due_at=_due_at(options)
        )
        options["headers"] = {**(options.get("headers") or {}), **accounting}
        return super().apply_async(args, kwargs, *positional, **options)

    def retry(self, args: Any = None, kwargs: Any = None, *positional: Any, **options: Any) -> Any:
        """Task.retry, minus a way it loses work (its new message goes through apply_async above, so it logs
        no payload either). When that message cannot be enqueued, Celery raises Reject(requeue=False), which
        acknowledges the task: its events would be gone, with no dead letter. The task goes back to its queue
        instead (or, if Redis refuses that too, stays unacknowledged until the visibility timeout hands it out
        again)."""
        try:
            return super().retry(args, kwargs, *positional, **options)
        except Reject as rejected:
            if rejected.requeue:
                raise
            logger.error(
                "could not enqueue the retry of a task (%r); it goes back to its queue",
                rejected.reason,
                extra={"event": "retry_enqueue_failed"},
            )
            raise Reject(rejected.reason, requeue=True) from None


def _due_at(options: dict[str, Any]) -> float:
    """When a message sent with these apply_async options may run: its eta, or now plus its countdown."""
    eta = options.get("eta")
    if isinstance(eta, datetime):
        return eta.timestamp()
    return time.time() + float(options.get("countdown") or 0)


def publisher_task(name: str, **options: Any) -> Callable[[Callable[..., Any]], Task]:
    """The one way tasks are declared here: explicit name and queue, results ignored, late acks, and
    database outages retried (with backoff, forever) instead of losing the work. Other database errors fail the
    same way every time: they are not retried forever (a publish task that keeps failing becomes poison)."""
    defaults: dict[str, Any] = {
        "name": name,
        "base": PublisherTask,
        "bind": True,
        "ignore_result": True,
        "acks_late": True,
        "reject_on_worker_lost": True,
        "autoretry_for": DATABASE_OUTAGE_ERRORS,
        "retry_backoff": 1,
        "retry_backoff_max": 30,
        "retry_jitter": True,
        "max_retries": None,
    }
    # Fast path celery_lean_strategy (fastpaths/): the main process does not decode the body; off, Celery's own.
    return shared_task(**(defaults | celery_lean_strategy.task_options() | options))


@publisher_task(name="publisher.publish_events")
def publish_events(
    self: Task,
    events: list[dict[str, Any]],
    source: str,
    accepted_at: float,
    routes: dict[str, list[str]] | None = None,
    in_doubt_since: float | None = None,
    traces: list[list[Any]] | None = None,
) -> None:
    # Each event's W3C trace context (runs, events.tracecontext.pack); a task queued without them (an older
    # release) is one new trace. The task's log lines name every trace it carries.
    contexts = tracecontext.unpack(traces, len(events))
    # Statistics, the queue counter and progress cleanup go to Redis in one round trip when the task ends.
    with deferred_writes(), trace_scope(contexts):
        _publish_events(
            self,
            events=events,
            source=source,
            accepted_at=accepted_at,
            routes=routes,
            in_doubt_since=in_doubt_since,
            traces=contexts,
        )


def _publish_events(
    task: Task,
    *,
    events: list[dict[str, Any]],
    source: str,
    accepted_at: float,
    routes: dict[str, list[str]] | None,
    in_doubt_since: float | None,
    traces: list[TraceContext],
) -> None:
    progress = TaskProgress(task.request.id)
    started = progress.start()
    if started.complete:
        logger.info(
            "publish task already done by an earlier run; nothing to do", extra={"event": "publish_redelivered"}
        )
        return
    if started.runs > 1 and started.first_started is not None:
        # An earlier run died: what it sent after its last record of progress may be in Kafka.
        since = started.first_started
        in_doubt_since = since if in_doubt_since is None else min(in_doubt_since, since)
    if started.runs > settings.PUBLISHER_POISON_MAX_DELIVERIES:
        # This task has killed its worker every time it ran: set aside for an operator what it has not delivered.
        poison.dead_letter_task(
            events=events,
            source=source,
            routes=routes,
            deliveries=started.runs - 1,
            delivered=started.done,
            in_doubt_since=in_doubt_since,
            traces=traces,
        )
        progress.finish(complete=True)
        queue.done(len(events))
        return
    try:
        result = publishing.publish_events(
            events=events,
            source=source,
            accepted_at=accepted_at,
            routes=None if routes is None else {int(i): topics for i, topics in routes.items()},
            skip=started.done,
            on_delivered=progress.delivered,
            in_doubt_since=in_doubt_since,
            traces=traces,
        )
    except publishing.PublishDeferred as deferred:
        _retry_what_is_owed(
            task, progress, deferred, events=events, source=source, accepted_at=accepted_at, traces=traces
        )
    except DATABASE_OUTAGE_ERRORS:
        progress.ended_cleanly()  # Postgres is away: wait for it as long as it takes, this is no poison
        raise  # retried by autoretry_for, with backoff
    except Exception as exc:
        # Celery acknowledges a task that raised: anything unexpected must come back instead of losing events.
        # Progress is kept, so acknowledged deliveries are not repeated; a task that keeps failing is
        # dead-lettered as poison after PUBLISHER_POISON_MAX_DELIVERIES runs.
        logger.exception("publish task failed; it will run again", extra={"event": "publish_error"})
        raise task.retry(exc=exc, countdown=min(60, 2 ** min(task.request.retries, 6)), max_retries=None) from exc
    progress.finish(complete=True)
    queue.done(len(events))
    logger.info(
        "published batch",
        extra={
            "event": "publish_done",
            "events": len(events),
            "published": result.published,
            "dead_lettered": result.dead_lettered,
            "unrouted": result.unrouted,
            "retries": result.retries,
        },
    )


def _retry_what_is_owed(
    task: Task,
    progress: TaskProgress,
    deferred: publishing.PublishDeferred,
    *,
    events: list[dict[str, Any]],
    source: str,
    accepted_at: float,
    traces: list[TraceContext],
) -> NoReturn:
    """Hand the deliveries still owed to a new task (the rest are done and must not repeat), then end this one."""
    indexes = sorted(deferred.pending)
    retry_events = [events[i] for i in indexes]
    retry_routes = {str(n): deferred.pending[i] for n, i in enumerate(indexes)}
    logger.warning("publish deferred: %s", deferred.reason, extra={"event": "publish_deferred", "count": len(indexes)})
    try:
        retry = task.retry(
            args=(),
            kwargs={
                "events": retry_events,
                "source": source,
                "accepted_at": accepted_at,
                "routes": retry_routes,
                "in_doubt_since": deferred.in_doubt_since,
                "traces": tracecontext.pack([traces[i] for i in indexes]),
            },
            countdown=deferred.delay,
            max_retries=None,
            throw=False,
            # The remainder is a task of its own: this one is complete, and a redelivery of it does nothing.
            task_id=str(uuid.uuid4()),
        )
    except Reject:
        # This very task goes back to the queue: its progress must outlive this run (what Kafka already has
        # is skipped next time), and a refused enqueue is no poison.
        progress.ended_cleanly()
        raise
    progress.finish(complete=True)
    queue.done(len(events) - len(retry_events))
    raise retry from deferred
