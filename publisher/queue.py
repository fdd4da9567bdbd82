"""How many accepted events wait for a worker. A Redis counter raised when a task is enqueued and lowered when
it finishes (or hands part of its work to a retry), so the API can refuse work it could not deliver without
measuring the queue per event."""

from __future__ import annotations

import time
from collections.abc import Callable

from config.redis import get_redis, script, script_then_wait, writes

QUEUED_EVENTS_KEY = "publisher:queued-events"
_CACHE_SECONDS = 0.2
_reads: dict[str, tuple[float, int]] = {}  # Redis key -> (when read, value), per process


# Admit `count` events only if the queue stays within `limit`, atomically across every API process.
# A counter that drifted below zero (a Redis restart lost its last second of increments, then the decrements
# arrived) is not trusted: it restarts from this reservation. A Lua function, so every script that admits
# events (this one, publisher.handoff's) reserves the same way.
RESERVE_LUA = """
local function reserve(key, count, limit)
  local depth = redis.call('INCRBY', key, count)
  if depth < count then
    redis.call('SET', key, count)
    depth = count
  end
  if depth > limit then
    redis.call('DECRBY', key, count)
    return false
  end
  return true
end
"""

_RESERVE = (
    RESERVE_LUA
    + """
return reserve(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])) and 1 or 0
"""
)


def add(count: int) -> None:
    get_redis().incrby(QUEUED_EVENTS_KEY, count)


def reserve(count: int, *, limit: int) -> bool:
    """Count `count` events as queued if that keeps the queue at or under `limit`; False (and nothing
    counted) otherwise. Exact under concurrency: one Lua script, one round trip."""
    return bool(script(_RESERVE)(keys=[QUEUED_EVENTS_KEY], args=[count, limit]))


def release(count: int) -> None:
    """Undo a reservation whose task could not be enqueued. Never raises (see done)."""
    done(count)


def done(count: int) -> None:
    """Events left the queue (published, dead-lettered, or handed on). Joins the task's deferred writes;
    a lost decrement only makes backpressure a little stricter until the counter drains."""
    if count <= 0:
        return
    with writes() as pipe:
        pipe.decrby(QUEUED_EVENTS_KEY, count)


def _read_cached(key: str, read: Callable[[], int], *, fresh: bool = False) -> int:
    """`read()`, at most every 0.2 s per process for each Redis `key` (unless `fresh`)."""
    now = time.monotonic()
    cached = _reads.get(key)
    if not fresh and cached is not None and now - cached[0] < _CACHE_SECONDS:
        return cached[1]
    value = read()
    _reads[key] = (now, value)
    return value


def depth(*, fresh: bool = False) -> int:
    """Queued events, read from Redis at most every 0.2 s per process."""
    return _read_cached(QUEUED_EVENTS_KEY, lambda: max(0, int(get_redis().get(QUEUED_EVENTS_KEY) or 0)), fresh=fresh)


def waiting_tasks(queue_name: str) -> int:
    """Tasks in the broker's list `queue_name` that no worker has taken yet, read at most every 0.2 s per process.
    Unlike the counter this cannot drift (a lost decrement, a purged queue): it is the queue itself."""
    return _read_cached(queue_name, lambda: int(get_redis().llen(queue_name)))


REPLICATION_FENCE_KEY = "publisher:replication-fence"
_FENCE = "return redis.call('INCR', KEYS[1])"


def wait_for_replicas(count: int, *, timeout: float) -> int:
    """WAIT covers only the writes of its own connection, and a task enqueued by kombu went through another one: a
    write on this connection (after the enqueue, so at a later replication offset) stands in for it."""
    _, acknowledged = script_then_wait(_FENCE, keys=[REPLICATION_FENCE_KEY], args=[], replicas=count, timeout=timeout)
    return int(acknowledged)
