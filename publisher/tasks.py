"""Celery tasks: thin wrappers that take plain JSON arguments and delegate to the publisher services."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Task, shared_task
from celery.exceptions import Reject
from celery.worker.request import Request
from django.conf import settings

from config.redis import deferred_writes
from publisher import handoff, poison, publishing, queue
from publisher.errors import DATABASE_OUTAGE_ERRORS
from publisher.progress import TaskProgress

logger = logging.getLogger(__name__)

PUBLISH_QUEUE = "publish"


class LeanRequest(Request):
    """What the worker's main process hands a pool process for a task: Celery pickles the request headers with
    the task's arguments already decoded in them, next to the message body, and the pool process decodes the
    body again and replaces them. For a batch of events that pickling was ~300 us per task of the main
    process's CPU (and the unpickling more in the pool's): the arguments now travel once, in the body."""

    @property
    def request_dict(self) -> dict[str, Any]:
        headers: dict[str, Any] = self._request_dict
        return {key: value for key, value in headers.items() if key not in ("args", "kwargs")}


def lean_strategy(task: Task, app: Any, consumer: Any, **options: Any) -> Callable[..., Any]:
    """Celery's default strategy for a task (the worker's main process receiving it), minus decoding its body.

    The main process decodes every message (decompress, parse the JSON) only to learn arguments it then does not
    use: the pool process gets the raw body and decodes it again to run the task. For a task of 300 events that
    was ~340 µs of the main process's CPU (~1.1 µs per event) and the decoded events held in memory for every
    prefetched task. The message is told it is decoded already, with empty arguments; nothing else changes
    (headers, acks, the raw body the pool process decodes)."""
    from celery.worker.strategy import default

    handle = default(task, app, consumer, **options)

    def on_message(message: Any, body: Any, *args: Any, **kwargs: Any) -> Any:
        if body is None and getattr(message, "_decoded_cache", True) is None:
            # What the main process sees as the arguments (its log line shows the task's kwargsrepr), fresh for
            # each message: Celery keeps them in the request.
            message._decoded_cache = ([], {}, dict(handoff.NO_EMBEDDED_CALLS))
        return handle(message, body, *args, **kwargs)

    return on_message


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
    def retry(self, args: Any = None, kwargs: Any = None, *positional: Any, **options: Any) -> Any:
        """Task.retry, minus two ways it loses or leaks work. Its new message logs no payload. And when that
        message cannot be enqueued, Celery raises Reject(requeue=False), which acknowledges the task: its events
        would be gone, with no dead letter. The task goes back to its queue instead (or, if Redis refuses that
        too, stays unacknowledged until the visibility timeout hands it out again)."""
        options.setdefault("argsrepr", "()")
        options.setdefault("kwargsrepr", describe_arguments(kwargs if kwargs is not None else self.request.kwargs))
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


def publisher_task(name: str, **options: Any) -> Callable[[Callable[..., Any]], Task]:
    """The one way tasks are declared here: explicit name and queue, results ignored, late acks, and
    database outages retried (with backoff, forever) instead of losing the work. Other database errors fail the
    same way every time: they are not retried forever (a publish task that keeps failing becomes poison)."""
    defaults: dict[str, Any] = {
        "name": name,
        "base": PublisherTask,
        "Request": LeanRequest,
        "Strategy": "publisher.tasks:lean_strategy",
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
    return shared_task(**(defaults | options))


@publisher_task(name="publisher.publish_events")
def publish_events(
    self: Task,
    events: list[dict[str, Any]],
    source: str,
    accepted_at: float,
    routes: dict[str, list[str]] | None = None,
) -> None:
    # Statistics, the queue counter and progress cleanup go to Redis in one round trip when the task ends.
    with deferred_writes():
        _publish_events(self, events=events, source=source, accepted_at=accepted_at, routes=routes)


def _publish_events(
    task: Task,
    *,
    events: list[dict[str, Any]],
    source: str,
    accepted_at: float,
    routes: dict[str, list[str]] | None,
) -> None:
    progress = TaskProgress(task.request.id)
    runs, already_delivered = progress.start()
    if runs > settings.PUBLISHER_POISON_MAX_DELIVERIES:
        # This task has killed its worker every time it ran: set aside for an operator what it has not delivered.
        poison.dead_letter_task(
            events=events, source=source, routes=routes, deliveries=runs - 1, delivered=already_delivered
        )
        progress.finish()
        queue.done(len(events))
        return
    try:
        result = publishing.publish_events(
            events=events,
            source=source,
            accepted_at=accepted_at,
            routes=None if routes is None else {int(i): topics for i, topics in routes.items()},
            skip=already_delivered,
            on_delivered=progress.delivered,
        )
    except publishing.PublishDeferred as deferred:
        # Only the deliveries still owed travel with the retry; the rest are done and must not repeat.
        indexes = sorted(deferred.pending)
        retry_events = [events[i] for i in indexes]
        retry_routes = {str(n): deferred.pending[i] for n, i in enumerate(indexes)}
        logger.warning(
            "publish deferred: %s", deferred.reason, extra={"event": "publish_deferred", "count": len(indexes)}
        )
        try:
            retry = task.retry(
                args=(),
                kwargs={"events": retry_events, "source": source, "accepted_at": accepted_at, "routes": retry_routes},
                countdown=deferred.delay,
                max_retries=None,
                throw=False,
            )
        except Reject:
            # This very task goes back to the queue: its progress must outlive this run (what Kafka already has
            # is skipped next time), and a refused enqueue is no poison.
            progress.ended_cleanly()
            raise
        progress.finish()
        queue.done(len(events) - len(retry_events))
        raise retry from deferred
    except DATABASE_OUTAGE_ERRORS:
        progress.ended_cleanly()  # Postgres is away: wait for it as long as it takes, this is no poison
        raise  # retried by autoretry_for, with backoff
    except Exception as exc:
        # Celery acknowledges a task that raised: anything unexpected must come back instead of losing events.
        # Progress is kept, so acknowledged deliveries are not repeated; a task that keeps failing is
        # dead-lettered as poison after PUBLISHER_POISON_MAX_DELIVERIES runs.
        logger.exception("publish task failed; it will run again", extra={"event": "publish_error"})
        raise task.retry(exc=exc, countdown=min(60, 2 ** min(task.request.retries, 6)), max_retries=None) from exc
    progress.finish()
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
