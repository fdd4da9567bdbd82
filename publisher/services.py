"""Publisher services: the API other apps use (ingestion hands work over through here, never via internals)."""

from __future__ import annotations

from publisher import kafka_gateway


def ensure_topics(*, partitions: int, replication_factor: int) -> kafka_gateway.EnsureTopicsResult:
    """Create every configured topic plus dlq.events if missing."""
    return kafka_gateway.ensure_topics(
        names=kafka_gateway.configured_topics(), partitions=partitions, replication_factor=replication_factor
    )
