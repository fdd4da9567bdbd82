"""The event API's Prometheus series (names are documented in README, "Metrics"; dashboards rely on them).

Counted by every web process into PROMETHEUS_MULTIPROC_DIR and added up by /metrics (publisher.views), like the
publisher's own series in publisher.metrics. Label values are bounded: event types, reasons, endpoints, statuses.
"""

from prometheus_client import Counter, Histogram

from events.limits import EVENT_TYPES

EVENTS_ACCEPTED = Counter("ingestion_events_accepted", "Events accepted by the API", ["event_type"])
EVENTS_REJECTED = Counter("ingestion_events_rejected", "Events or requests rejected by the API", ["reason"])
EVENTS_DUPLICATE = Counter("ingestion_events_duplicate", "Events answered as duplicates")
REQUEST_DURATION = Histogram(
    "ingestion_request_duration_seconds",
    "Time to answer a request to the event API (the endpoints django_http_* leave out)",
    ["endpoint", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
API_KEY_LOOKUPS = Counter(
    "ingestion_api_key_lookups", "API keys looked up in the database (not in the process's cache)", ["result"]
)

# Every reason ingestion.views and ingestion.services count under (http_<status> for a RequestError).
REJECT_REASONS = (
    "invalid",
    "unauthorized",
    "rate_limited",
    "backpressure",
    "queue_delay",
    "web_busy",
    "http_400",
    "http_413",
    "http_415",
)

# Label values known in advance exist from process start, at 0: an alert's rate() then counts the first events
# too (a series born at 5 has no increase), and "accepted but nothing published" has both sides to compare.
for _event_type in EVENT_TYPES:
    EVENTS_ACCEPTED.labels(event_type=_event_type)
for _reason in REJECT_REASONS:
    EVENTS_REJECTED.labels(reason=_reason)
# Accepted and unavailable, the two answers alerts compare (others appear as they are given).
for _endpoint in ("event", "batch"):
    for _status in ("202", "503"):
        REQUEST_DURATION.labels(endpoint=_endpoint, status=_status)
