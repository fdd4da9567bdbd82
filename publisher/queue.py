"""How many accepted events wait for a worker, and how long new ones would wait. A Redis counter raised when a task
is enqueued and lowered when it finishes (or hands part of its work to a retry), so the API can refuse work it could
not deliver without measuring the queue per event; the due time of the oldest task no worker has taken yet; and a
count of events drained, for the rate the workers finish them at.

"Queued" means held by the broker and not finished: publish tasks in the queue's list (delayed retries included),
in a worker's in-flight list (taken, not yet recorded: fast path kombu_redis_transport) and in kombu's `unacked`
hash (taken by a worker, running or prefetched, or left by a worker that died until they are handed out again).
Every publish task message carries two headers for this: how many events it holds and when it is due (when it was
enqueued, or when its retry countdown ends). The counter is reconciled against them every
INGEST_QUEUE_RECONCILE_INTERVAL, so a lost decrement (a killed process, a Redis restart, a purged queue) does not
make backpressure stricter for good.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from django.conf import settings

from config.redis import get_redis, script, script_then_wait, writes

logger = logging.getLogger(__name__)

QUEUED_EVENTS_KEY = "publisher:queued-events"
RECONCILED_KEY = "publisher:queued-events:reconciled"  # held for one reconcile interval by whoever reconciled
DRAINED_EVENTS_KEY = "publisher:drained-events"  # only grows: events that left the queue, for the drain rate
EVENTS_HEADER = "ingest_events"
DUE_HEADER = "ingest_due_at"
PUBLISH_TASK = "publisher.publish_events"
_CACHE_SECONDS = 0.2
_T = TypeVar("_T")
_reads: dict[str, tuple[float, object]] = {}  # Redis key -> (when read, value), per process


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
    a lost decrement only makes backpressure a little stricter until the next reconcile (see snapshot)."""
    if count <= 0:
        return
    with writes() as pipe:
        pipe.decrby(QUEUED_EVENTS_KEY, count)
        pipe.incrby(DRAINED_EVENTS_KEY, count)


def _read_cached(key: str, read: Callable[[], _T], *, fresh: bool = False) -> _T:
    """`read()`, at most every 0.2 s per process for each Redis `key` (unless `fresh`)."""
    now = time.monotonic()
    cached = _reads.get(key)
    if not fresh and cached is not None and now - cached[0] < _CACHE_SECONDS:
        return cached[1]  # type: ignore[return-value]  # stored by this function for the same key
    value = read()
    _reads[key] = (now, value)
    return value


def message_headers(*, events: int | None, due_at: float) -> dict[str, float | int]:
    """The headers a publish task message carries for the queue's accounting (see the module's docstring):
    `events` for publish tasks (None for other tasks), `due_at` when a worker may run it (epoch seconds)."""
    headers: dict[str, float | int] = {DUE_HEADER: round(due_at, 4)}
    if events is not None:
        headers[EVENTS_HEADER] = events
    return headers


# KEYS: counter, queue list, unacked hash, reconcile mark, drained events, registry of the workers' in-flight lists
# (fast path kombu_redis_transport: taken off the queue, not yet recorded as unacknowledged; their names are read
# from the registry, as that transport's own restore script does).  ARGV: reconcile interval in ms (0: never).
# Returns {counter, due time of the oldest waiting task (a string) or false, correction made to the counter,
# events drained so far}.
# The reconcile reads every queued message (no more than once per interval across all processes): atomic, so
# nothing moves under it, and it only searches each message for the header (JSON with or without spaces, the
# message itself or nested in the unacked entry). A publish task without the header (sent by an older release)
# leaves the counter as it is: it cannot be counted.
_SNAPSHOT = """
local function number_after(text, marker)
  local at = string.find(text, marker, 1, true)
  if not at then return nil end
  return tonumber(string.match(text, '^%s*([%d%.eE%+%-]+)', at + #marker))
end
local function events_in(message)
  local n = number_after(message, '"ingest_events":')
  if n then return n end
  if string.find(message, '"publisher.publish_events"', 1, true) then return nil end
  return 0
end
local function events_in_list(list)
  local total = 0
  local length = redis.call('LLEN', list)
  for first = 0, length - 1, 200 do
    for _, message in ipairs(redis.call('LRANGE', list, first, first + 199)) do
      local n = events_in(message)
      if not n then return nil end
      total = total + n
    end
  end
  return total
end
local function queued_events(queue, unacked, inflight_registry)
  local total = events_in_list(queue)
  if not total then return nil end
  local inflight = redis.call('HGETALL', inflight_registry)
  for i = 1, #inflight, 2 do
    if inflight[i + 1] == queue then
      local n = events_in_list(inflight[i])
      if not n then return nil end
      total = total + n
    end
  end
  for _, entry in ipairs(redis.call('HVALS', unacked)) do
    local n = events_in(entry)
    if not n then return nil end
    total = total + n
  end
  return total
end
local counter = tonumber(redis.call('GET', KEYS[1]) or '0')
local corrected = 0
local interval = tonumber(ARGV[1])
if interval > 0 and redis.call('SET', KEYS[4], '1', 'NX', 'PX', interval) then
  local actual = queued_events(KEYS[2], KEYS[3], KEYS[6])
  if actual and actual ~= counter then
    redis.call('SET', KEYS[1], actual)
    corrected = actual - counter
    counter = actual
  end
end
local oldest = redis.call('LINDEX', KEYS[2], -1)
local due = oldest and number_after(oldest, '"ingest_due_at":')
return {counter, due and string.format('%.4f', due) or false, corrected, tonumber(redis.call('GET', KEYS[5]) or '0')}
"""


@dataclass(frozen=True)
class Snapshot:
    depth: int  # queued events (the counter)
    oldest_due_at: float | None  # when the oldest task no worker has taken became due; None: no such task known
    # Events/s the workers can finish (see _capacity); None: not measured yet.
    capacity: float | None = None

    def delay(self, now: float) -> float:
        """How long an event enqueued now would wait for a worker: everything queued ahead of it (waiting,
        prefetched, running) at the rate the workers can finish it, never less than the oldest waiting task's
        age (all there is before the rate is measured, and a floor if the counter drifted low)."""
        age = 0.0 if self.oldest_due_at is None else max(0.0, now - self.oldest_due_at)
        if self.capacity is None or self.depth == 0:
            return age
        if self.capacity <= 0:
            return float("inf")  # tasks waited a whole window and none finished: the workers are stalled
        return max(age, self.depth / self.capacity)

    def capacity_for_delay(self, limit: float) -> int | None:
        """The most events the queue may hold so that new ones wait at most `limit` seconds: what the workers
        finish in that time. None while their rate is not measured."""
        return None if self.capacity is None else int(self.capacity * limit)


_RATE_WINDOW = 1.0  # seconds of real time a drain rate is measured over, at least
# Per process: the reading a window starts with (read at, events drained then, tasks waiting then), and the
# capacity measured so far.
_trend: tuple[float, int, bool] | None = None
_measured: float | None = None
_BUSY_WINDOWS = 3  # the capacity is the lowest rate of the last few busy windows
_busy_rates: deque[float] = deque(maxlen=_BUSY_WINDOWS)


def _capacity(now: float, drained: int, *, waiting: bool) -> float | None:
    """The events/s the workers can finish. Measured over windows of _RATE_WINDOW to 5 x that: a window that
    starts and ends with tasks waiting that no worker has taken (every worker busy) measures it (the lowest of
    the last _BUSY_WINDOWS such windows); a window with idle moments only shows what was offered, a lower
    bound, which can raise the figure but neither set nor lower it (else a quiet spell would make the next burst
    look like an overload). None until a busy window."""
    global _trend, _measured
    if _trend is None:
        _trend = (now, drained, waiting)
        return _measured
    started, drained_then, waiting_then = _trend
    if now - started > 5 * _RATE_WINDOW:  # this process read nothing for a while: what happened meanwhile is unknown
        _trend = (now, drained, waiting)
    elif now - started >= _RATE_WINDOW:
        rate = max(0, drained - drained_then) / (now - started)
        if waiting and waiting_then:
            # The lowest of the last few: one window's rate varies with what else the machine's cores do, and
            # a rate too high lets the queue hold more than the workers finish within the delay limit.
            _busy_rates.append(rate)
            _measured = min(_busy_rates)
        elif _measured is not None and rate > _measured:
            _busy_rates.clear()  # the workers did more than the busy windows said: those are out of date
            _measured = rate
        _trend = (now, drained, waiting)
    return _measured


def snapshot(*, fresh: bool = False) -> Snapshot:
    """The counter and the oldest waiting task's due time, in one round trip at most every 0.2 s per process;
    reconciles the counter first when INGEST_QUEUE_RECONCILE_INTERVAL has passed since the last reconcile."""
    return _read_cached(QUEUED_EVENTS_KEY, _read_snapshot, fresh=fresh)


def _read_snapshot() -> Snapshot:
    from publisher import handoff

    location = handoff.publish_queue_keys()
    if location is None:  # the broker is elsewhere: no queue to read, the counter is all there is
        return Snapshot(depth=max(0, int(get_redis().get(QUEUED_EVENTS_KEY) or 0)), oldest_due_at=None)
    queue_name, unacked_key, inflight_registry = location
    interval_ms = int(settings.INGEST_QUEUE_RECONCILE_INTERVAL * 1000)
    counter, due, corrected, drained = script(_SNAPSHOT)(
        keys=[QUEUED_EVENTS_KEY, queue_name, unacked_key, RECONCILED_KEY, DRAINED_EVENTS_KEY, inflight_registry],
        args=[interval_ms],
    )
    if corrected:
        logger.warning(
            "queued-events counter was off by %d; reconciled with the queue",
            -int(corrected),
            extra={"event": "queue_counter_reconciled", "correction": int(corrected)},
        )
    oldest_due = None if not due else float(due)
    capacity = _capacity(time.time(), int(drained), waiting=oldest_due is not None)
    return Snapshot(depth=max(0, int(counter)), oldest_due_at=oldest_due, capacity=capacity)


def forget_snapshot() -> None:
    """The next snapshot() in this process reads Redis, whatever its cached reading's age."""
    _reads.pop(QUEUED_EVENTS_KEY, None)


def depth(*, fresh: bool = False) -> int:
    """Queued events, read from Redis at most every 0.2 s per process."""
    return snapshot(fresh=fresh).depth


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
