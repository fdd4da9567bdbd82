"""schemathesis hooks (SCHEMATHESIS_HOOKS=tests.schemathesis_hooks): drop generated bodies that break rules
the OpenAPI schema language cannot state — relative to the clock (occurred_at at most 5 minutes ahead) or
across fields (ended_at >= started_at, items_correct <= items_attempted) or on serialized size — so that
"schema-valid" really means valid. Everything else schemathesis generates is sent as is."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import schemathesis

NIL_UUID = "00000000-0000-0000-0000-000000000000"


def _instant(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00").replace("t", "T"))
        return parsed.astimezone(UTC) if parsed.tzinfo else None
    except (ValueError, OverflowError):
        return None


def _plausible(event: Any) -> bool:
    if not isinstance(event, dict):
        return True
    occurred = _instant(event.get("occurred_at"))
    if occurred is not None and occurred > datetime.now(UTC) + timedelta(minutes=4):
        return False
    for name in ("occurred_at", "started_at", "ended_at"):
        if isinstance(event.get(name), str) and _instant(event[name]) is None:
            return False  # e.g. year 0001 with a positive offset: not representable in UTC
    started, ended = _instant(event.get("started_at")), _instant(event.get("ended_at"))
    if started and ended and ended < started:
        return False
    attempted, correct = event.get("items_attempted"), event.get("items_correct")
    if isinstance(attempted, int) and isinstance(correct, int) and correct > attempted:
        return False
    if isinstance(correct, int) and attempted is None and correct > 0:
        return False
    if event.get("event_id") == NIL_UUID:
        return False
    try:
        if len(orjson.dumps(event)) > 32 * 1024 or len(orjson.dumps(event.get("properties") or {})) > 8 * 1024:
            return False
    except TypeError:
        return True
    return True


@schemathesis.hook
def filter_body(ctx: Any, body: Any) -> bool:
    if isinstance(body, dict) and isinstance(body.get("events"), list):
        return all(_plausible(event) for event in body["events"])
    return _plausible(body)
