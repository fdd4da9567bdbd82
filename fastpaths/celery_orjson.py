"""Fast path `celery_orjson`: kombu's global "json" serializer replaced by orjson (encoding) and msgspec
(decoding).

Replaces: kombu's own "json" serializer (`kombu.utils.json`, the standard library's encoder with kombu's type
hooks), which every task message goes through. kombu.serialization.register() is public, but re-registering
"json" swaps kombu's global default for every user of kombu in the process, so it is fenced here.
Why: encoding a task carrying a batch of events is many times faster, which the API pays on every enqueue;
decoding a task body (twice per task: the worker's main process builds the request from it, the pool process
runs it) takes a fraction of kombu's time each (docs/performance.md, first and fourth rounds).

What comes out is what kombu would make: whatever orjson would encode differently from kombu (datetimes,
dataclasses, subclasses of builtins, integers over 64 bits, non-string keys, unknown types) goes to kombu's own
encoder, and a body carrying kombu's typed values ("__type__" markers) or anything msgspec refuses (NaN, lone
surrogates) to kombu's own decoder. Two differences remain, both absent from our messages: uuid.UUID becomes a
plain string, and NaN becomes null (events with NaN are rejected at the API). Still JSON: workers and
producers with or without this fast path understand each other.

Upstream change that would let it go: a faster default JSON in kombu (kombu lets one pick a serializer per
task, but Celery's own messages, e.g. retries, use the configured default).
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
from kombu import serialization
from kombu.utils import json as kombu_json

import fastpaths

NAME = "celery_orjson"
VERIFIED = {"kombu": "5.5.4", "orjson": "3.13.0", "msgspec": "0.22.0"}

_ORJSON_PASSTHROUGH = (
    orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def enabled() -> bool:
    return fastpaths.gate(NAME, VERIFIED)


def json_dumps(obj: Any) -> str:
    """kombu's "json" encoder through orjson, kombu's own for whatever orjson would write differently."""
    try:
        return orjson.dumps(obj, option=_ORJSON_PASSTHROUGH).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return str(kombu_json.dumps(obj))


_decode_json = msgspec.json.Decoder().decode
_KOMBU_TYPE_MARKER = b'"__type__"'


def json_loads(data: str | bytes | bytearray | memoryview) -> Any:
    """kombu's "json" decoder through msgspec, kombu's own for typed values or what msgspec refuses."""
    raw = data.encode() if isinstance(data, str) else bytes(data) if isinstance(data, memoryview) else data
    if _KOMBU_TYPE_MARKER not in raw:
        try:
            return _decode_json(raw)
        except msgspec.DecodeError:
            pass
    return kombu_json.loads(data)


def dumps(obj: Any) -> str:
    """The "json" encoder in effect: ours when this fast path is on, kombu's otherwise."""
    return json_dumps(obj) if enabled() else str(kombu_json.dumps(obj))


def install() -> bool:
    """Register the "json" serializer (config/celery.py calls this once at import). Returns whether it did."""
    if not enabled():
        return False
    serialization.register("json", json_dumps, json_loads, content_type="application/json", content_encoding="utf-8")
    return True
