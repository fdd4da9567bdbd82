"""One lazily created Redis client per process (connection pool inside), shared by the apps."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import redis
from django.conf import settings
from redis.client import Pipeline
from redis.commands.core import Script
from redis.connection import parse_url
from redis.exceptions import NoScriptError
from redis.sentinel import Sentinel

logger = logging.getLogger(__name__)

_client: redis.Redis | None = None
_pid: int | None = None
_lock = threading.Lock()


def get_redis() -> redis.Redis:
    global _client, _pid
    if _client is None or _pid != os.getpid():
        with _lock:
            if _client is None or _pid != os.getpid():
                _client = connect(
                    settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
                )
                _pid = os.getpid()
                _scripts.clear()
    return _client


def connect(url: str, **options: Any) -> redis.Redis:
    """A client for `url`'s Redis, or with REDIS_SENTINELS set for the primary the Sentinels name (REDIS_URL's host
    and port are then not used, its database and password are). That client asks the Sentinels for the primary's
    address on every new connection and drops its connections when the answer changes, so after a failover its
    next command reaches the new primary: callers see errors only while there is no primary."""
    if not settings.REDIS_SENTINELS:
        return redis.Redis.from_url(url, **options)
    return _sentinel(url, options).master_for(settings.REDIS_SENTINEL_MASTER)


def _sentinel(url: str, options: dict[str, Any]) -> Sentinel:
    target = parse_url(url)
    for name in ("host", "port", "connection_class"):
        target.pop(name, None)
    timeouts = {name: options[name] for name in ("socket_connect_timeout", "socket_timeout") if name in options}
    return Sentinel(
        settings.REDIS_SENTINELS,
        sentinel_kwargs={"socket_connect_timeout": 1, "socket_timeout": 1} | timeouts,
        **(target | options),
    )


class SentinelMasterPool:
    """Django's cache `pool_class` (settings.CACHES) behind Sentinel: the primary's pool, as `connect` builds it."""

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Any:
        return _sentinel(url, options).master_for(settings.REDIS_SENTINEL_MASTER).connection_pool


_scripts: dict[str, Script] = {}


def script(source: str) -> Script:
    """A Lua script registered with this process's client: called by EVALSHA, and loaded again by redis-py
    if Redis lost it (a restart)."""
    client = get_redis()
    registered = _scripts.get(source)
    if registered is None:
        registered = _scripts[source] = client.register_script(source)
    return registered


def script_then_wait(source: str, *, keys: Sequence[Any], args: Sequence[Any], replicas: int, timeout: float) -> Any:
    """Run `source` like `script`, then Redis WAIT up to `timeout` seconds for `replicas` replicas to hold what it
    wrote: both on one connection (WAIT covers its own connection's writes) in one round trip. Returns (the
    script's reply, how many replicas acknowledged)."""
    registered = script(source)
    client = get_redis()
    for attempt in range(2):
        pipe = client.pipeline(transaction=False)
        pipe.evalsha(registered.sha, len(keys), *keys, *args)
        pipe.wait(replicas, max(1, round(timeout * 1000)))
        try:
            reply, acknowledged = pipe.execute()
        except NoScriptError:  # a new primary after a failover, or a restart: its script cache is empty
            if attempt:
                raise
            registered.sha = client.script_load(source)
            continue
        return reply, int(acknowledged)
    raise AssertionError("unreachable")


# Fire-and-forget writes of one unit of work (statistics, counters, cleanup) are collected here and sent in a
# single round trip at its end; a per-task round trip per write was most of a small task's Redis cost.
# In MULTI/EXEC: redis-py sends a large pipeline in several writes, and a process killed between them must leave
# all or none applied (a task's progress deleted without its "complete" mark made its redelivery send again).
_deferred: ContextVar[Pipeline | None] = ContextVar("deferred_redis_writes", default=None)


@contextmanager
def deferred_writes() -> Iterator[None]:
    """Inside this block, `writes()` pipelines join one pipeline that is executed when the block ends
    (also when it raises). A failure is logged, never raised: these writes must not fail the work."""
    pipe = get_redis().pipeline(transaction=True)
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
    pipe = get_redis().pipeline(transaction=True)
    yield pipe
    _execute_quietly(pipe)


def _execute_quietly(pipe: Pipeline) -> None:
    if not len(pipe):
        return
    try:
        pipe.execute()
    except Exception as exc:
        logger.warning("%d Redis writes lost: %r", len(pipe), exc, extra={"event": "redis_writes_lost"})
