"""Fast path `celery_lean_strategy`: the worker's main process hands a publish task on without decoding its body,
and without pickling the decoded arguments for the pool.

Replaces: Celery's default task strategy (`celery.worker.strategy.default`) and request class
(`celery.worker.request.Request`) for the publish tasks (publisher.tasks.publisher_task gives them
`task_options()`, which is empty when this fast path is off).
Why: the main process decodes every message (decompress, parse the JSON) only to learn arguments it then does not
use: the pool process gets the raw body and decodes it again to run the task. That cost the main process CPU per
event for nothing (docs/performance.md, seventh round), and the decoded events held in memory for every prefetched
task. And Celery pickles the request headers with the task's arguments already decoded in them, next to the message
body, for the pool process, which decodes the body again and replaces them: more of the main process's CPU per
batch task (fourth round; the unpickling more in the pool's). Here the message is told it is decoded already, with
empty arguments (kombu's `Message._decoded_cache`), and the request the pool gets leaves the arguments out of its
headers (Celery's `Request._request_dict`); nothing else changes (headers, acks, the raw body the pool process
decodes).

Upstream change that would let it go: Celery's worker not decoding the body in the main process when the
task runs in a pool that decodes it again (a "lazy arguments" request), e.g. celery/celery#5353-style work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Task
from celery.worker.request import Request

import fastpaths
from fastpaths.celery_handoff import NO_EMBEDDED_CALLS

NAME = "celery_lean_strategy"
VERIFIED = {"celery": "5.5.3", "kombu": "5.5.4"}
STRATEGY = "fastpaths.celery_lean_strategy:lean_strategy"


def enabled() -> bool:
    return fastpaths.gate(NAME, VERIFIED)


class LeanRequest(Request):
    """A request whose pickled headers for the pool leave out the arguments (they travel once, in the body)."""

    @property
    def request_dict(self) -> dict[str, Any]:
        headers: dict[str, Any] = self._request_dict
        return {key: value for key, value in headers.items() if key not in ("args", "kwargs")}


def lean_strategy(task: Task, app: Any, consumer: Any, **options: Any) -> Callable[..., Any]:
    """Celery's default strategy for a task (the worker's main process receiving it), minus decoding its body."""
    from celery.worker.strategy import default

    handle = default(task, app, consumer, **options)

    def on_message(message: Any, body: Any, *args: Any, **kwargs: Any) -> Any:
        if body is None and getattr(message, "_decoded_cache", True) is None:
            # What the main process sees as the arguments (its log line shows the task's kwargsrepr), fresh for
            # each message: Celery keeps them in the request.
            message._decoded_cache = ([], {}, dict(NO_EMBEDDED_CALLS))
        return handle(message, body, *args, **kwargs)

    return on_message


def task_options() -> dict[str, Any]:
    """What a publish task declaration adds: the lean request and strategy when on, nothing (Celery's own) off."""
    if not enabled():
        return {}
    return {"Request": LeanRequest, "Strategy": STRATEGY}
