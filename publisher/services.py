"""Publisher services: the API other apps use (ingestion hands work over through here, never via internals)."""

from __future__ import annotations

import logging
from typing import Any

from publisher import kafka_gateway, queue

logger = logging.getLogger(__name__)


def ensure_topics(*, partitions: int, replication_factor: int) -> kafka_gateway.EnsureTopicsResult:
    """Create every configured topic plus dlq.events if missing."""
    return kafka_gateway.ensure_topics(
        names=kafka_gateway.configured_topics(), partitions=partitions, replication_factor=replication_factor
    )


def enqueue_events(*, events: list[dict[str, Any]], source: str, accepted_at: float) -> None:
    """Hand an accepted request's events to the workers: one task for the whole batch. Raises if the broker
    (Redis) cannot take it, so the caller can refuse the request instead of half-accepting it."""
    from publisher.tasks import publish_events

    publish_events.apply_async(
        kwargs={"events": events, "source": source, "accepted_at": accepted_at},
        argsrepr="",
        kwargsrepr=f"<{len(events)} events>",
        retry=False,
    )
    try:
        queue.add(len(events))
    except Exception:  # the task is queued; a missed count only weakens backpressure a little
        logger.warning("could not count %d queued events", len(events))


def queue_depth() -> int:
    """Events accepted and not yet published (cached for 0.2 s per process)."""
    return queue.depth()
