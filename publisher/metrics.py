"""The publisher's Prometheus series (names are documented in docs/operations.md, "Metrics"). Label values are
bounded: topics, event types and error classes, never event ids. The API's series are in ingestion.metrics,
routing's in routing.metrics: each app owns what it counts; /metrics (below) exports them all.

Every process (web workers, Celery pool processes) counts into its own files in PROMETHEUS_MULTIPROC_DIR
(config/__init__.py) and /metrics (publisher.views.prometheus_metrics) adds them up. Counters are exported
with the `_total` suffix (e.g. publisher_events_published_total).

The three gauges below are not meant to be set by the code that does the work: they describe shared state
(Redis, Postgres), so /metrics computes them at scrape time (SCRAPE_TIME_GAUGES) and ignores whatever a process
may have stored in them.
"""

import collections
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

from fastpaths import prometheus_histogram

QUEUE_DEPTH = Gauge("ingestion_queue_depth", "Tasks waiting in the Celery publish queue", multiprocess_mode="max")

PUBLISHED = Counter("publisher_events_published", "Records acknowledged by Kafka", ["topic"])
FAILED = Counter("publisher_events_failed", "Failed delivery attempts", ["topic", "error_class"])
RETRIED = Counter("publisher_events_retried", "Delivery retries")
DEAD_LETTERED = Counter("publisher_events_dlq", "Records dead-lettered", ["topic", "reason"])
DEFERRED = Counter("publisher_events_deferred", "Deliveries deferred while the breaker was open")
PUBLISH_LATENCY = Histogram(
    "publisher_publish_latency_seconds",
    "Time from API acceptance to Kafka acknowledgement",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BREAKER_STATE = Gauge(
    "publisher_circuit_breaker_state", "0 closed, 1 half-open, 2 open", multiprocess_mode="mostrecent"
)
DLQ_PENDING = Gauge("dlq_pending_entries", "Dead letters waiting for an operator", multiprocess_mode="mostrecent")

# Computed by /metrics when it is scraped: queue.depth(fresh=True), breaker.current_state() as 0/1/2, and a
# bounded count of pending DeadLetter rows.
SCRAPE_TIME_GAUGES: dict[str, str] = {
    "ingestion_queue_depth": "Accepted events waiting to be published (all processes)",
    "publisher_circuit_breaker_state": "Shared circuit breaker: 0 closed, 1 half-open, 2 open",
    "dlq_pending_entries": "Dead letters waiting for an operator (saturates at publisher.stats.DLQ_COUNT_CAP)",
}


def initialize_series(*, topics: Iterable[str], reasons: Iterable[str]) -> None:
    """Create the per-topic series at 0 (published, and dead-lettered for each reason), so they exist from
    process start: an alert's rate() then counts the first failures too (a series born at 5 has no increase),
    and "accepted but nothing published" has a published side to compare. Called for the configured topics when
    the app loads (publisher.apps) and for the topics in the routing table when a worker is ready
    (publisher.signals). In multiprocess mode a forked child writes these zeros into its own file too."""
    reasons = tuple(reasons)
    for topic in topics:
        PUBLISHED.labels(topic=topic)
        for reason in reasons:
            DEAD_LETTERED.labels(topic=topic, reason=reason)


# In multiprocess mode each labels().inc() or observe() writes to a memory-mapped file, which per record added
# up on the publish path. These count a whole batch with one write per distinct value.


def count_each(counter: Counter, label: str, values: Iterable[str]) -> None:
    """Increment `counter` by how often each label value occurs in `values`."""
    for value, n in collections.Counter(values).items():
        counter.labels(**{label: value}).inc(n)


def observe_many(histogram: Histogram, amount: float, count: int) -> None:
    """The same as `count` calls of histogram.observe(amount) (one publish round acknowledges many records at
    the same moment): in two writes with the fast path `prometheus_histogram`, else observe() per record."""
    if count <= 0:
        return
    if prometheus_histogram.enabled():
        prometheus_histogram.observe_many(histogram, amount, count)
        return
    for _ in range(count):
        histogram.observe(amount)
