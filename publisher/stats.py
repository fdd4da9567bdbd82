"""Publisher aggregates in Redis, for /metrics/publisher, the health checks and the admin dashboard.

The Prometheus series (publisher.metrics) are for a Prometheus server; these answer "how is publishing doing"
without one: totals since the stats began, an exponential moving average of the publish latency, the last
publish time, and per-minute buckets for the last hour (throughput per topic, failures, retries, dead letters,
a latency histogram), shared by every worker process through Redis.

Writes: the publish task calls record_batch() once per batch; its commands join the task's one round trip of
deferred writes (config.redis.deferred_writes), whatever the batch size. A Redis error is logged and
swallowed: statistics never fail a delivery.

Definitions (totals and windows alike):
    attempts     = published + failed        (every delivery attempt was acknowledged or failed)
    success_rate = published / attempts      error_rate = failed / attempts
    dlq_rate     = dead_lettered / (published + dead_lettered)   (share of finished deliveries that failed)
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from config.redis import get_redis, writes
from events.timefmt import utc_iso_ms
from publisher.models import DeadLetter

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "publisher:stats"
HISTORY_MINUTES = 60
BUCKET_TTL_SECONDS = (HISTORY_MINUTES + 5) * 60
DEFAULT_WINDOW_SECONDS = 300
DEFAULT_EMA_ALPHA = 0.1  # per event: each acknowledged record moves the average 10 % of the way
# Upper bounds (ms) of the latency histogram buckets; one more bucket holds everything slower.
LATENCY_BOUNDS_MS: tuple[float, ...] = (
    1, 2, 5, 10, 25, 50, 100, 200, 300, 500, 750, 1000, 2000, 5000, 10000, 30000, 60000,
)  # fmt: skip

# Pending dead letters: counted at most every DLQ_COUNT_CACHE_SECONDS per process, with a bounded query.
DLQ_COUNT_CAP = 100_000
DLQ_COUNT_CACHE_SECONDS = 5.0
DLQ_COUNT_TIMEOUT_MS = 500

# One call per publish task: add its counts to the totals and to its minute's bucket, and move the latency
# average (EMA) and the last publish time. KEYS: totals, minute bucket. ARGV: bucket TTL, latency sum in ms
# ('' when none), mean latency, records in the mean, EMA alpha, publish time (0: none), then field, count pairs.
# (One script instead of ~20 pipelined commands: less client CPU per task; docs/performance.md, fourth round.)
_RECORD_SCRIPT = """
local totals, minute = KEYS[1], KEYS[2]
for i = 7, #ARGV, 2 do
  local count = tonumber(ARGV[i + 1])
  redis.call('HINCRBY', totals, ARGV[i], count)
  redis.call('HINCRBY', minute, ARGV[i], count)
end
if ARGV[2] ~= '' then
  redis.call('HINCRBYFLOAT', totals, 'lat_sum_ms', ARGV[2])
  redis.call('HINCRBYFLOAT', minute, 'lat_sum_ms', ARGV[2])
end
redis.call('EXPIRE', minute, ARGV[1])
local n = tonumber(ARGV[4])
if n > 0 then
  local x = tonumber(ARGV[3])
  local current = redis.call('HGET', totals, 'ema_ms')
  local value = x
  if current then
    local keep = (1 - tonumber(ARGV[5])) ^ n
    value = tonumber(current) * keep + x * (1 - keep)
  end
  redis.call('HSET', totals, 'ema_ms', string.format('%.6f', value))
end
local at = tonumber(ARGV[6])
if at > 0 then
  local last = tonumber(redis.call('HGET', totals, 'last_publish_at') or '0')
  if at > last then redis.call('HSET', totals, 'last_publish_at', string.format('%.6f', at)) end
end
return 0
"""


def _prefix() -> str:
    return str(getattr(settings, "PUBLISHER_STATS_KEY_PREFIX", DEFAULT_PREFIX))


def totals_key() -> str:
    return f"{_prefix()}:totals"


def minute_key(minute: int) -> str:
    return f"{_prefix()}:m:{minute}"


def _minute_of(ts: float) -> int:
    return int(ts // 60) * 60


def bucket_index(ms: float) -> int:
    """Index of the histogram bucket that holds `ms` (bucket i holds values <= LATENCY_BOUNDS_MS[i])."""
    return bisect.bisect_left(LATENCY_BOUNDS_MS, ms)


def record_batch(
    *,
    published_by_topic: Mapping[str, int],
    failed: int = 0,
    retried: int = 0,
    dead_lettered: int = 0,
    latencies_s: Iterable[float] = (),
    now: float | None = None,
) -> None:
    """Add one publish task's outcome: records acknowledged per topic, failed delivery attempts, retries,
    dead-lettered records, and the acceptance-to-acknowledgement latency of each acknowledged record."""
    published = sum(n for n in published_by_topic.values() if n > 0)
    latencies_ms = [max(0.0, float(s) * 1000.0) for s in latencies_s]
    if not (published or failed or retried or dead_lettered or latencies_ms):
        return
    now = time.time() if now is None else now
    fields: dict[str, int] = {"batches": 1}
    if published:
        fields["published"] = published
        for topic, count in published_by_topic.items():
            if count > 0:
                fields[f"t:{topic}"] = count
    if failed > 0:
        fields["failed"] = failed
    if retried > 0:
        fields["retried"] = retried
    if dead_lettered > 0:
        fields["dlq"] = dead_lettered
    for index, count in Counter(bucket_index(ms) for ms in latencies_ms).items():
        fields[f"lb:{index}"] = count
    if latencies_ms:
        fields["lat_count"] = len(latencies_ms)
    mean = sum(latencies_ms) / len(latencies_ms) if latencies_ms else 0.0
    alpha = float(getattr(settings, "PUBLISHER_STATS_EMA_ALPHA", DEFAULT_EMA_ALPHA))
    args: list[Any] = [
        BUCKET_TTL_SECONDS,
        repr(sum(latencies_ms)) if latencies_ms else "",
        f"{mean:.6f}",
        len(latencies_ms),
        alpha,
        f"{now if published else 0:.6f}",
    ]
    for name, count in fields.items():
        args += (name, count)
    with writes() as pipe:
        # EVAL, not EVALSHA: redis-py would add a SCRIPT EXISTS round trip to the pipeline for a registered script.
        pipe.eval(_RECORD_SCRIPT, 2, totals_key(), minute_key(_minute_of(now)), *args)


# ----------------------------------------------------------------------------------------------- reading


def _decode(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def _int(data: Mapping[str, str], name: str) -> int:
    try:
        return int(float(data.get(name, 0)))
    except ValueError:
        return 0


def _float(data: Mapping[str, str], name: str) -> float | None:
    try:
        return float(data[name]) if name in data else None
    except ValueError:
        return None


def _buckets(data: Mapping[str, str]) -> list[int]:
    return [_int(data, f"lb:{i}") for i in range(len(LATENCY_BOUNDS_MS) + 1)]


def _topics(data: Mapping[str, str]) -> dict[str, int]:
    return {name[2:]: _int(data, name) for name in sorted(data) if name.startswith("t:")}


def percentile(buckets: Sequence[int], q: float) -> float | None:
    """The q-quantile (0..1) of a bucketed histogram, interpolated linearly inside the bucket (the way
    Prometheus' histogram_quantile does). Values in the overflow bucket report the last bound."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(buckets):
        if count <= 0:
            continue
        if seen + count >= rank:
            if index >= len(LATENCY_BOUNDS_MS):
                return float(LATENCY_BOUNDS_MS[-1])
            lower = LATENCY_BOUNDS_MS[index - 1] if index > 0 else 0.0
            upper = LATENCY_BOUNDS_MS[index]
            return round(lower + (upper - lower) * max(0.0, rank - seen) / count, 3)
        seen += count
    return float(LATENCY_BOUNDS_MS[-1])


def _ratio(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 6) if denominator > 0 else None


def _rates(published: int, failed: int, dead_lettered: int) -> dict[str, float | None]:
    attempts = published + failed
    return {
        "success_rate": _ratio(published, attempts),
        "error_rate": _ratio(failed, attempts),
        "dlq_rate": _ratio(dead_lettered, published + dead_lettered),
    }


def iso_time(ts: float | None) -> str | None:
    return None if ts is None else utc_iso_ms(ts)


def _read(minutes: Sequence[int]) -> tuple[dict[str, str], list[dict[str, str]]]:
    pipe = get_redis().pipeline(transaction=False)
    pipe.hgetall(totals_key())
    for minute in minutes:
        pipe.hgetall(minute_key(minute))
    replies = pipe.execute()
    return _decode(replies[0]), [_decode(r) for r in replies[1:]]


def _window(buckets: Sequence[Mapping[str, str]], seconds: float) -> dict[str, Any]:
    published = sum(_int(b, "published") for b in buckets)
    failed = sum(_int(b, "failed") for b in buckets)
    dead_lettered = sum(_int(b, "dlq") for b in buckets)
    histogram = [sum(column) for column in zip(*(_buckets(b) for b in buckets), strict=True)] if buckets else []
    topics: Counter[str] = Counter()
    for b in buckets:
        topics.update(_topics(b))
    return {
        "window_seconds": round(seconds, 1),
        "published": published,
        "failed": failed,
        "retried": sum(_int(b, "retried") for b in buckets),
        "dlq": dead_lettered,
        "events_per_second": round(published / seconds, 3) if seconds > 0 else None,
        **_rates(published, failed, dead_lettered),
        "p50_latency_ms": percentile(histogram, 0.50),
        "p95_latency_ms": percentile(histogram, 0.95),
        "p99_latency_ms": percentile(histogram, 0.99),
        "topics": dict(sorted(topics.items())),
    }


def snapshot(*, window_seconds: float | None = None, now: float | None = None) -> dict[str, Any]:
    """Totals since the stats began plus the same over the last `window_seconds` (default
    PUBLISHER_STATS_WINDOW, 300 s, in whole minutes). Raises if Redis is unreachable."""
    now = time.time() if now is None else now
    window = float(window_seconds or int(getattr(settings, "PUBLISHER_STATS_WINDOW", DEFAULT_WINDOW_SECONDS)))
    first = _minute_of(now - window)
    minutes = list(range(first, _minute_of(now) + 1, 60))
    totals, recent = _read(minutes)
    published, failed, dead_lettered = _int(totals, "published"), _int(totals, "failed"), _int(totals, "dlq")
    lat_count = _int(totals, "lat_count")
    lat_sum = _float(totals, "lat_sum_ms") or 0.0
    last = _float(totals, "last_publish_at")
    ema = _float(totals, "ema_ms")
    recent_stats = _window(recent, max(1.0, now - first))
    lifetime_histogram = _buckets(totals)
    p95 = recent_stats["p95_latency_ms"]
    return {
        "events_published": published,
        "events_failed": failed,
        "events_retried": _int(totals, "retried"),
        "events_dlq": dead_lettered,
        "batches": _int(totals, "batches"),
        **_rates(published, failed, dead_lettered),
        "avg_latency_ms": round(ema, 3) if ema is not None else None,
        "mean_latency_ms": round(lat_sum / lat_count, 3) if lat_count else None,
        "p95_latency_ms": p95 if p95 is not None else percentile(lifetime_histogram, 0.95),
        "last_publish_at": iso_time(last),
        "last_publish_ts": last,
        "seconds_since_last_publish": round(max(0.0, now - last), 3) if last is not None else None,
        "topics": _topics(totals),
        "recent": recent_stats,
    }


def timeseries(*, minutes: int = HISTORY_MINUTES, now: float | None = None) -> list[dict[str, Any]]:
    """One point per minute for the last `minutes` minutes (oldest first, the current minute last)."""
    now = time.time() if now is None else now
    current = _minute_of(now)
    keys = [current - 60 * i for i in range(max(1, minutes) - 1, -1, -1)]
    _, buckets = _read(keys)
    points = []
    for minute, data in zip(keys, buckets, strict=True):
        published, failed, dead_lettered = _int(data, "published"), _int(data, "failed"), _int(data, "dlq")
        histogram = _buckets(data)
        points.append(
            {
                "t": minute,
                "published": published,
                "failed": failed,
                "retried": _int(data, "retried"),
                "dlq": dead_lettered,
                "topics": _topics(data),
                **_rates(published, failed, dead_lettered),
                "p50_latency_ms": percentile(histogram, 0.50),
                "p95_latency_ms": percentile(histogram, 0.95),
                "p99_latency_ms": percentile(histogram, 0.99),
            }
        )
    return points


# ------------------------------------------------------------------------------------ pending dead letters

_dlq_lock = threading.Lock()
_dlq_cache: tuple[float, int | None] = (0.0, None)


def pending_dead_letters(*, max_age: float = DLQ_COUNT_CACHE_SECONDS) -> int | None:
    """Dead letters with status pending, counted at most every `max_age` seconds per process with a query that
    is bounded in work (stops at DLQ_COUNT_CAP rows, served by the (status, created_at) index) and in time
    (statement_timeout). None when it cannot be counted and nothing was counted before."""
    global _dlq_cache
    checked, value = _dlq_cache
    if time.monotonic() - checked < max_age and checked:
        return value
    with _dlq_lock:
        checked, value = _dlq_cache
        if time.monotonic() - checked < max_age and checked:
            return value
        try:
            with transaction.atomic():
                with connection.cursor() as cursor:
                    cursor.execute(f"SET LOCAL statement_timeout = {int(DLQ_COUNT_TIMEOUT_MS)}")
                value = DeadLetter.objects.filter(status=DeadLetter.Status.PENDING)[:DLQ_COUNT_CAP].count()
                with connection.cursor() as cursor:
                    cursor.execute("SET LOCAL statement_timeout TO DEFAULT")
        except Exception as exc:
            logger.warning("pending dead letters not counted: %r", exc)
        _dlq_cache = (time.monotonic(), value)
        return value
