"""schemathesis hooks (SCHEMATHESIS_HOOKS=tests.schemathesis_hooks): drop generated bodies that break rules
the OpenAPI schema language cannot state — relative to the clock (occurred_at at most 5 minutes ahead) or
across fields (ended_at >= started_at, items_correct <= items_attempted) or on serialized size, or deep inside
the free-form `properties` (control characters, integers beyond 2**53, nesting deeper than 32) or in object
keys (control characters) — so that
"schema-valid" really means valid. Everything else schemathesis generates is sent as is."""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import schemathesis
import zstandard
from schemathesis.transport.serialization import serialize_json

NIL_UUID = "00000000-0000-0000-0000-000000000000"


def _instant(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00").replace("t", "T"))
        return parsed.astimezone(UTC) if parsed.tzinfo else None
    except (ValueError, OverflowError):
        return None


_KEY_CONTROL = re.compile(r"[\x00-\x1f\x7f]").search
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]").search


def _carriable(value: Any, level: int = 1) -> bool:
    """Whether `properties` content is what a protobuf topic can carry (ingestion.schema's rules)."""
    if isinstance(value, str):
        return _TEXT_CONTROL(value) is None
    if isinstance(value, int) and not isinstance(value, bool):
        return -(2**53) <= value <= 2**53
    if isinstance(value, dict | list):
        if level > 32:
            return False
        items = value.values() if isinstance(value, dict) else value
        keys_ok = not isinstance(value, dict) or all(_KEY_CONTROL(str(k)) is None for k in value)
        return keys_ok and all(_carriable(item, level + 1) for item in items)
    return True


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
    if isinstance(event.get("properties"), dict) and not _carriable(event["properties"]):
        return False
    if isinstance(event.get("metadata"), dict) and any(_KEY_CONTROL(str(k)) for k in event["metadata"]):
        return False  # OpenAPI 3.0 has no propertyNames, so the schema cannot say it
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
    if isinstance(body, list):  # an NDJSON batch: its lines' events
        return all(_plausible(event) for event in body)
    return _plausible(body)


# The body is compressed as the generated Content-Encoding header says (one of the schema's enum), so a
# positive case is a request the API must accept; any other value is sent over a plain body.
_COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "zstd": zstandard.ZstdCompressor().compress,
}


def _encoded(ctx: Any, body: bytes) -> bytes:
    coding = (ctx.case.headers or {}).get("Content-Encoding")
    compress = _COMPRESSORS.get(coding) if isinstance(coding, str) else None
    return compress(body) if compress else body


def _json(value: Any) -> bytes:
    """What schemathesis's own JSON serializer sends (raw bytes as they are, the rest as requests' json=)."""
    prepared = serialize_json(value)
    if "data" in prepared:
        return bytes(prepared["data"])
    return json.dumps(prepared["json"], allow_nan=False).encode()


@schemathesis.serializer("application/json")
def json_body(ctx: Any, value: Any) -> bytes:
    return _encoded(ctx, _json(value))


@schemathesis.serializer("application/x-ndjson")
def ndjson_body(ctx: Any, value: Any) -> bytes:
    """One line per event of the generated array; anything else (negative data) as one line."""
    lines = [_json(item) for item in value] if isinstance(value, list) else [_json(value)]
    return _encoded(ctx, b"\n".join(lines))
