"""The one timestamp format the service writes: UTC, milliseconds, `Z`.

First of all in the headers of every published and dead-lettered record (`ingested_at`, `dlq_timestamp`), which
consumers parse, hence its place beside the event schema; the logs and the JSON endpoints use it too.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utc_iso_ms(moment: float | datetime | None = None) -> str:
    """`2026-11-27T05:26:13.791Z` for an epoch timestamp, an aware datetime, or now."""
    if moment is None:
        moment = datetime.now(UTC)
    elif not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
