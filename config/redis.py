"""One lazily created Redis client per process (connection pool inside), shared by the apps."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import redis
from django.conf import settings
from redis.client import Pipeline
from redis.commands.core import Script

logger = logging.getLogger(__name__)

_client: redis.Redis | None = None
_pid: int | None = None
_lock = threading.Lock()


def get_redis() -> redis.Redis:
    global _client, _pid
    if _client is None or _pid != os.getpid():
        with _lock:
            if _client is None or _pid != os.getpid():
                _client = redis.Redis.from_url(
                    settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
                )
                _pid = os.getpid()
                _scripts.clear()
    return _client


_scripts: dict[str, Script] = {}


def script(source: str) -> Script:
    """A Lua script registered with this process's client: called by EVALSHA, and loaded again by redis-py
    if Redis lost it (a restart)."""
    client = get_redis()
    registered = _scripts.get(source)
    if registered is None:
        registered = _scripts[source] = client.register_script(source)
    return registered


# Fire-and-forget writes of one unit of work (statistics, counters, cleanup) are collected here and sent in a
# single round trip at its end; a per-task round trip per write was most of a small task's Redis cost.
_deferred: ContextVar[Pipeline | None] = ContextVar("deferred_redis_writes", default=None)


@contextmanager
def deferred_writes() -> Iterator[None]:
    """Inside this block, `writes()` pipelines join one pipeline that is executed when the block ends
    (also when it raises). A failure is logged, never raised: these writes must not fail the work."""
    pipe = get_redis().pipeline(transaction=False)
    token = _deferred.set(pipe)
    try:
        yield
    finally:
        _deferred.reset(token)
        _execute_quietly(pipe)


@contextmanager
def writes() -> Iterator[Pipeline]:
    """A pipeline for writes whose loss is tolerable: the surrounding `deferred_writes()` block's, or one of
    its own that is executed when this block ends. Errors are logged, never raised."""
    pending = _deferred.get()
    if pending is not None:
        yield pending
        return
    pipe = get_redis().pipeline(transaction=False)
    yield pipe
    _execute_quietly(pipe)


def _execute_quietly(pipe: Pipeline) -> None:
    if not len(pipe):
        return
    try:
        pipe.execute()
    except Exception as exc:
        logger.warning("%d Redis writes lost: %r", len(pipe), exc, extra={"event": "redis_writes_lost"})
