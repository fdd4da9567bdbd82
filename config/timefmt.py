"""The one timestamp format the service writes (headers, logs, JSON endpoints): UTC, milliseconds, `Z`."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_iso_ms(moment: float | datetime | None = None) -> str:
    """`2026-11-27T05:26:13.791Z` for an epoch timestamp, an aware datetime, or now."""
    if moment is None:
        moment = datetime.now(UTC)
    elif not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
