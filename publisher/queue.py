"""How many accepted events wait for a worker. A Redis counter raised when a task is enqueued and lowered when
it finishes (or hands part of its work to a retry), so the API can refuse work it could not deliver without
measuring the queue per event."""

from __future__ import annotations

import time

from config.redis import get_redis, script, writes

QUEUED_EVENTS_KEY = "publisher:queued-events"
_CACHE_SECONDS = 0.2
_cached: tuple[float, int] = (0.0, 0)
_waiting_cached: dict[str, tuple[float, int]] = {}


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


def depth(*, fresh: bool = False) -> int:
    """Queued events, read from Redis at most every 0.2 s per process."""
    global _cached
    now = time.monotonic()
    if not fresh and now - _cached[0] < _CACHE_SECONDS:
        return _cached[1]
    value = max(0, int(get_redis().get(QUEUED_EVENTS_KEY) or 0))
    _cached = (now, value)
    return value


def waiting_tasks(queue_name: str) -> int:
    """Tasks in the broker's list `queue_name` that no worker has taken yet, read at most every 0.2 s per process.
    Unlike the counter this cannot drift (a lost decrement, a purged queue): it is the queue itself."""
    now = time.monotonic()
    cached = _waiting_cached.get(queue_name)
    if cached is not None and now - cached[0] < _CACHE_SECONDS:
        return cached[1]
    value = int(get_redis().llen(queue_name))
    _waiting_cached[queue_name] = (now, value)
    return value
