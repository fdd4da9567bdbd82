"""The bench's Redis database: which one a run uses, and removing what a phase left in it."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import redis


def bench_redis_url(configured: str) -> str:
    """The bench's own Redis database (7) on the configured server, so runs never touch the application's data."""
    parts = urlsplit(configured)
    return urlunsplit((parts.scheme, parts.netloc, "/7", parts.query, parts.fragment))


def queue_keys() -> tuple[str, ...]:
    try:
        from publisher.queue import QUEUED_EVENTS_KEY
    except ImportError:  # pragma: no cover - renamed: the literal below is the last known name
        QUEUED_EVENTS_KEY = "publisher:queued-events"
    return ("publish", "unacked", "unacked_index", "unacked_mutex", QUEUED_EVENTS_KEY)


def _unlink_matching(client: redis.Redis, pattern: str) -> int:
    removed = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=pattern, count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            removed += client.unlink(*batch)
            batch.clear()
    if batch:
        removed += client.unlink(*batch)
    return removed


def purge(client: redis.Redis, tag: str, *, task_keys: bool = False) -> int:
    """Remove what a phase left in the bench's Redis database: the queue, unacked tasks, the queued-events
    counter, the dedup marks of this run's events, and with `task_keys` the publisher's per-task progress keys
    (only ever asked for when the bench has a database of its own). Returns the number of dedup marks removed."""
    client.delete(*queue_keys())
    # An attempt's mark is keyed by learner and client attempt id (events.schema.attempt_dedup_key).
    removed = _unlink_matching(client, f"ingest:dedup:attempt:*:bench-{tag}-*")
    if task_keys:
        for kind in ("done", "runs", "started", "complete"):
            _unlink_matching(client, f"publisher:task-{kind}:*")
    return removed
