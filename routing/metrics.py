"""Routing's Prometheus series (names are documented in README, "Metrics"; dashboards rely on them).

Counted by the publish workers as they route each batch (publisher.publishing) and added up across processes by
/metrics (publisher.views). Label values are bounded: rule names and event types.
"""

from prometheus_client import Counter

from events.limits import EVENT_TYPES

RULE_MATCHES = Counter("routing_rule_matches", "Events matched per routing rule", ["rule"])
UNROUTED = Counter("routing_events_unrouted", "Events that no rule matched", ["event_type"])

# At 0 from process start for every known event type (see ingestion.metrics); rules are rows, counted as met.
for _event_type in EVENT_TYPES:
    UNROUTED.labels(event_type=_event_type)
