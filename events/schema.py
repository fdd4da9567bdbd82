"""Event schema v1: validation and normalisation of ingested events (pure Python, no Django).

This runs on the ingest hot path, so it is a hand-written single pass rather than DRF serializers or a
msgspec fast path with an exhaustive fallback. msgspec stops at the first error and speaks its own
messages, so it needs a second implementation of every rule to report *all* errors; and when measured,
it did not pay: msgspec.convert into a Union re-resolves the type on every call, and per-type
Struct conversion only replaces the cheap part, leaving timestamps, UUIDs, sizes and building the
normalised dict. One pass that only formats messages when something is wrong costs a few microseconds
per event (``python -m bench.validation``) and reports every error with its path.

Input is expected to be what :func:`parse_json_body` returns (orjson output). Any other Python value
is handled without raising: it is rejected with errors, never with an exception.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Final

import msgspec
import orjson

from events.limits import (
    EVENT_TYPES,
    JSON_MAX_DEPTH,
    MAX_EVENT_BYTES,
    MAX_EXACT_PROPERTY_INT,
    MAX_FUTURE_SKEW,
    MAX_INT,
    MAX_METADATA_KEYS,
    MAX_PROPERTIES_BYTES,
    MAX_PROPERTIES_DEPTH,
    MAX_RESPONSE_BYTES,
    MAX_STRING_CHARS,
    MIN_INT,
    SCHEMA_VERSION,
)

__all__ = [
    "DEDUP_PREFIX",
    "BatchValidation",
    "BodyError",
    "FieldError",
    "ValidatedEvent",
    "attempt_dedup_key",
    "error_body",
    "parse_json_body",
    "validate_batch",
    "validate_event",
    "validate_ndjson_batch",
]

NIL_UUID: Final = "00000000-0000-0000-0000-000000000000"


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with a request. ``path`` is "" for the whole body, "events[3]" for a whole event."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


class ValidatedEvent(msgspec.Struct, frozen=True):
    """A valid, normalised event. A Struct because it is built once per event and is much cheaper
    to construct than a frozen slots dataclass.

    ``data`` is JSON-ready (orjson.dumps-able) and shares ``metadata``/``properties`` with the input.
    """

    data: dict[str, Any]
    dedup_key: str | None


@dataclass(slots=True)
class BatchValidation:
    valid: list[tuple[int, ValidatedEvent]] = field(default_factory=list)
    # (index, canonical event_id if the client sent a valid one, errors with paths "events[i].field")
    invalid: list[tuple[int, str | None, list[FieldError]]] = field(default_factory=list)
    # Non-empty means the body itself was rejected and no event was looked at.
    body_errors: list[FieldError] = field(default_factory=list)


def error_body(message: str, errors: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """A rejection as the API reports it, `{"error": message, "errors": [{"path", "message"}]}` (the errors are
    FieldError.as_dict()s); the shape of every error under /api/, the event endpoints' and the rule tester's."""
    body: dict[str, Any] = {"error": message}
    if errors:
        body["errors"] = errors
    return body


class BodyError(ValueError):
    """The request body is not acceptable JSON; ``message`` is meant for the API user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --------------------------------------------------------------------------- JSON body


def parse_json_body(body: bytes | bytearray | memoryview, *, subject: str = "request body") -> Any:
    """Parse a request body with orjson, turning its errors into clear :class:`BodyError` messages.

    orjson already rejects everything the contract forbids (invalid UTF-8, lone surrogate escapes,
    NaN/Infinity, numbers overflowing to infinity such as 1e999, nesting deeper than 1024); only
    its wording needs help. ``subject`` names what is parsed in those messages (an NDJSON line: "line 3").
    """
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BodyError(_describe_json_error(body, exc, subject)) from exc
    if _has_digit_run(body, 19):  # -(2**63) - 1 has 19 digits
        # orjson turns integers beyond 64 bits into floats, silently changing them; the standard library keeps
        # them exact, so the range checks below can refuse them by name. Only bodies with such a digit run pay.
        try:
            return json.loads(bytes(body))
        except RecursionError:
            raise BodyError(f"{subject} is nested too deeply to check its large integers") from None
    return parsed


_DIGITS_AS_ZEROS = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))


def _has_digit_run(data: bytes | bytearray | memoryview, length: int) -> bool:
    """Whether `data` holds `length` digits in a row: every digit made "0", anything else a space, then one
    substring search. A regular expression ([0-9]{19}) tries a match at every digit, and cost several times
    orjson's whole parse of a body."""
    raw = data if isinstance(data, bytes | bytearray) else bytes(data)
    return b"0" * length in raw.translate(_DIGITS_AS_ZEROS)


def _describe_json_error(
    body: bytes | bytearray | memoryview | str, exc: orjson.JSONDecodeError, subject: str = "request body"
) -> str:
    msg = exc.msg
    # orjson's position is in characters, which is what a user counts in an editor.
    where = f"line {exc.lineno} column {exc.colno} (char {exc.pos})"
    if subject != "request body":  # one line of a body: its line number is in the subject
        where = f"column {exc.colno}"
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else bytes(body)
    if not raw.strip(b" \t\r\n"):
        return f"{subject} is empty"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        # orjson reports every bad byte as "surrogates not allowed" at char 0; find the real offset.
        return f"{subject} is not valid UTF-8 (invalid byte at offset {err.start})"
    if "surrogate" in msg:
        return f"{subject} contains an unpaired UTF-16 surrogate escape (\\ud800-\\udfff) at {where}"
    if "infinity" in msg:
        return f"{subject} contains a number too large to represent (it overflows to infinity) at {where}"
    if msg.startswith("depth limit"):
        return f"{subject} is nested too deeply (more than {JSON_MAX_DEPTH} levels) at {where}"
    if text.startswith(("NaN", "Infinity", "-Infinity"), exc.pos):  # orjson only says "unexpected character"
        return f"{subject} contains NaN or Infinity, which are not valid JSON numbers, at {where}"
    return f"{subject} is not valid JSON: {msg} at {where}"


# --------------------------------------------------------------------------- field tables

_COMMON: Final = ("event_type", "event_id", "user_id", "occurred_at", "schema_version", "metadata")
_TYPE_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "attempt": ("client_attempt_id", "session_id", "item_id", "correct", "quality", "time_taken_ms", "response"),
    "session": ("session_id", "started_at", "ended_at", "items_attempted", "items_correct"),
    "placement": ("placement_id", "completed", "score", "level"),
    "activity": ("activity_type", "properties"),
}
# Precomputed so the unknown-field check is one C-level subset test on the hot path.
_ALLOWED: Final = {t: frozenset(_COMMON + f) for t, f in _TYPE_FIELDS.items()}
# With a bad event_type, only fields that no event type knows are reported as unknown.
_ANY_TYPE: Final = frozenset(name for names in _ALLOWED.values() for name in names)

_REQUIRED: Final = "is required"
_STRING: Final = f"must be a string of 1 to {MAX_STRING_CHARS} characters"
_BOOL: Final = "must be a boolean (true or false)"
_TIMESTAMP: Final = "must be an RFC 3339 timestamp with a UTC offset, e.g. 2026-11-27T03:38:52Z"
_FUTURE: Final = f"is more than {MAX_FUTURE_SKEW.seconds // 60} minutes in the future"
_COUNT: Final = f"must be an integer between 0 and {MAX_INT}"
_OBJECT: Final = "must be an object"
_UNKNOWN: Final = "unknown field"
_METADATA_VALUE: Final = "must be a string, a finite number or a boolean"
_METADATA_INT: Final = f"must be an integer between {MIN_INT} and {MAX_INT} (int64)"
_CONTROL_IN_ID: Final = "must not contain control characters (U+0000-U+001F, U+007F)"
_CONTROL_IN_TEXT: Final = "must not contain control characters other than tab, line feed and carriage return"
_CONTROL_IN_KEY: Final = "key must not contain control characters (U+0000-U+001F, U+007F)"

# Shape *and* field ranges in one C-level match. Most clients send UTC ('Z': JavaScript toISOString,
# Go, Java Instant), and for those the canonical text is the input re-padded: no datetime object.
# Canonical text has a fixed width, so comparing it as strings compares instants.
_RFC3339 = re.compile(
    r"(?!0000)[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])[Tt]"
    r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?"
    r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
).fullmatch
# Suffix that pads "YYYY-MM-DDTHH:MM:SS.f…" (length n, 21 <= n <= 26) to 6 fractional digits plus "Z".
_PAD: Final = tuple("0" * (26 - n) + "Z" for n in range(27))
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}").fullmatch
_fromisoformat = datetime.fromisoformat
_date_fromisoformat = date.fromisoformat

_Errors = list[tuple[str, str]]  # (path relative to the event, message); FieldErrors are built at the end


def _integral(value: Any) -> int | None:
    """Accept 3.0 as 3: the contract only rules out floats *with a fraction*. Never bools."""
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer():
        return int(value)
    return None


def _timestamp(value: Any) -> str | None:
    """Return an RFC 3339 timestamp as canonical UTC text "YYYY-MM-DDTHH:MM:SS.ffffffZ", or None.

    Fixed width (always 6 fractional digits; more are truncated, as fromisoformat does) so stored
    timestamps sort correctly as text. Leap seconds (:60) are rejected: Python's datetime, and so
    most consumers, cannot represent them.
    """
    if type(value) is not str or _RFC3339(value) is None:
        return None
    if value[-1] != "Z" or value[10] != "T":
        # RFC 3339: -00:00 is UTC with an unknown local offset.
        if value[10] != "T" or not value.endswith(("+00:00", "-00:00")):
            return _shift_to_utc(value)
        value = value[:-6] + "Z"
    # The regex allows days 29-31 in every month; only those need a calendar check.
    if value[8] == "3" or value[8:10] == "29":
        try:
            _date_fromisoformat(value[:10])
        except ValueError:
            return None
    n = len(value)
    if n == 27:
        return value
    if n == 20:
        return value[:19] + ".000000Z"
    return value[:-1] + _PAD[n - 1] if n < 27 else value[:26] + "Z"


def _shift_to_utc(value: str) -> str | None:
    """The slow path of _timestamp for non-UTC offsets (and lowercase 't'/'z'): a datetime round trip."""
    try:
        # upper(): 3.11 fromisoformat rejects the lowercase 't'/'z' that RFC 3339 allows.
        dt = _fromisoformat(value.upper()).astimezone(UTC)
    except (ValueError, OverflowError):  # Feb 30, or shifting to UTC leaves years 1-9999
        return None
    # orjson formats datetimes several times faster than isoformat()/strftime().
    text = orjson.dumps(dt, option=orjson.OPT_UTC_Z)[1:-1].decode()
    return text if len(text) == 27 else text[:19] + ".000000Z"  # orjson drops a zero fraction


class _IdSource:
    """uuid4 strings from one os.urandom call per batch (uuid.uuid4() per event is costly, mostly the
    syscall and UUID object). Instances are per call, so threads never share random bytes."""

    __slots__ = ("_count", "_hex", "_pos")

    _VARIANT: Final = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}

    def __init__(self, count: int) -> None:
        self._count = max(count, 1)
        self._hex = ""
        self._pos = 0

    def __call__(self) -> str:
        pos = self._pos
        if pos >= len(self._hex):
            self._hex = os.urandom(16 * self._count).hex()
            pos = 0
        h = self._hex[pos : pos + 32]
        self._pos = pos + 32
        # Set the version (4) and RFC 4122 variant (10xx) nibbles.
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{self._VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


# --------------------------------------------------------------------------- per-type checks
# Each takes raw.get, the output dict and the error list, and writes fields to ``out`` in declaration
# order so normalised events always have the same key order. The happy path is written out inline
# (no helper call per field: calls are the dominant cost at this scale); helpers only pick messages.


def _str_error(value: Any) -> str:
    return _REQUIRED if value is None else _STRING


def _bool_error(value: Any) -> str:
    return _REQUIRED if value is None else _BOOL


def _count(value: Any) -> int | None:
    """A non-negative int64, or None."""
    v = value if type(value) is int else _integral(value)
    return v if v is not None and 0 <= v <= MAX_INT else None


def _check_attempt(get: Any, out: dict[str, Any], errs: _Errors) -> None:
    v = get("client_attempt_id")
    if type(v) is str and 0 < len(v) <= MAX_STRING_CHARS:
        out["client_attempt_id"] = v
    else:
        errs.append(("client_attempt_id", _str_error(v)))
    v = get("session_id")
    if type(v) is str and 0 < len(v) <= MAX_STRING_CHARS:
        out["session_id"] = v
    else:
        errs.append(("session_id", _str_error(v)))
    v = get("item_id")
    if type(v) is str and 0 < len(v) <= MAX_STRING_CHARS:
        out["item_id"] = v
    else:
        errs.append(("item_id", _str_error(v)))
    v = get("correct")
    if type(v) is bool:
        out["correct"] = v
    else:
        errs.append(("correct", _bool_error(v)))
    v = get("quality")
    if type(v) is int and 0 <= v <= 5:
        out["quality"] = v
    elif (q := _integral(v)) is not None and 0 <= q <= 5:
        out["quality"] = q
    else:
        errs.append(("quality", _REQUIRED if v is None else "must be an integer between 0 and 5"))
    v = get("time_taken_ms")
    if type(v) is int and 0 <= v <= MAX_INT:
        out["time_taken_ms"] = v
    elif (n := _count(v)) is not None:
        out["time_taken_ms"] = n
    else:
        errs.append(("time_taken_ms", _REQUIRED if v is None else _COUNT))
    v = get("response")
    if v is not None:
        # Up to 1024 code points cannot exceed 4096 UTF-8 bytes, so most responses skip encoding.
        if type(v) is str and (
            len(v) <= MAX_RESPONSE_BYTES // 4 or len(v.encode("utf-8", "surrogatepass")) <= MAX_RESPONSE_BYTES
        ):
            out["response"] = v
        else:
            errs.append(("response", f"must be a string of at most {MAX_RESPONSE_BYTES} bytes in UTF-8"))


def _check_session(get: Any, out: dict[str, Any], errs: _Errors) -> None:
    v = get("session_id")
    if type(v) is str and 0 < len(v) <= MAX_STRING_CHARS:
        out["session_id"] = v
    else:
        errs.append(("session_id", _str_error(v)))
    v = get("started_at")
    started = _timestamp(v)
    if started is None:
        errs.append(("started_at", _REQUIRED if v is None else _TIMESTAMP))
    else:
        out["started_at"] = started
    v = get("ended_at")
    if v is not None:
        ended = _timestamp(v)
        if ended is None:
            errs.append(("ended_at", _TIMESTAMP))
        elif started is not None and ended < started:  # canonical text compares like instants
            errs.append(("ended_at", "must not be earlier than started_at"))
        else:
            out["ended_at"] = ended
    v = get("items_attempted")
    attempted = 0 if v is None else _count(v)
    if attempted is None:
        errs.append(("items_attempted", _COUNT))
    else:
        out["items_attempted"] = attempted
    v = get("items_correct")
    correct = 0 if v is None else _count(v)
    if correct is None:
        errs.append(("items_correct", _COUNT))
    elif attempted is not None and correct > attempted:
        errs.append(("items_correct", "must not exceed items_attempted"))
    else:
        out["items_correct"] = correct


def _check_placement(get: Any, out: dict[str, Any], errs: _Errors) -> None:
    v = get("placement_id")
    if type(v) is str and 0 < len(v) <= MAX_STRING_CHARS:
        out["placement_id"] = v
    else:
        errs.append(("placement_id", _str_error(v)))
    v = get("completed")
    if type(v) is bool:
        out["completed"] = v
    else:
        errs.append(("completed", _bool_error(v)))
    v = get("score")
    if v is not None:
        t = type(v)
        if (t is int and MIN_INT <= v <= MAX_INT) or (t is float and v - v == 0.0):  # x - x: nan for nan/inf
            out["score"] = v
        elif t is int:
            errs.append(("score", f"must be a finite number; integers between {MIN_INT} and {MAX_INT} (int64)"))
        else:
            errs.append(("score", "must be a finite number"))
    v = get("level")
    if v is not None:
        if type(v) is str and 0 < len(v) <= MAX_STRING_CHARS:
            out["level"] = v
        else:
            errs.append(("level", _STRING))


def _check_activity(get: Any, out: dict[str, Any], errs: _Errors) -> None:
    v = get("activity_type")
    if type(v) is str and 0 < len(v) <= MAX_STRING_CHARS:
        out["activity_type"] = v
    else:
        errs.append(("activity_type", _str_error(v)))
    v = get("properties")
    if v is None:
        out["properties"] = {}
    elif isinstance(v, dict):
        out["properties"] = v  # size is checked once the whole event has been serialised
    else:
        errs.append(("properties", _OBJECT))


_TYPE_CHECKS: Final = {
    "attempt": _check_attempt,
    "session": _check_session,
    "placement": _check_placement,
    "activity": _check_activity,
}


def _is_scalar(value: Any) -> bool:
    t = type(value)
    return t is str or t is int or t is bool or (t is float and value - value == 0.0)  # nan/inf - itself is nan


def _check_metadata(md: Any, out: dict[str, Any], errs: _Errors) -> None:
    if md is None:
        out["metadata"] = {}
    elif not isinstance(md, dict):
        errs.append(("metadata", _OBJECT))
    elif len(md) > MAX_METADATA_KEYS:
        # Per-key errors would add nothing the user can act on before trimming the object.
        errs.append(("metadata", f"must have at most {MAX_METADATA_KEYS} keys (got {len(md)})"))
    else:
        for v in md.values():
            t = type(v)
            if t is str or t is bool or (t is float and v - v == 0.0) or (t is int and MIN_INT <= v <= MAX_INT):
                continue
            break
        else:
            out["metadata"] = md
            return
        for k, v in md.items():
            if not _is_scalar(v):
                errs.append((f"metadata.{k}", _METADATA_VALUE))
            elif type(v) is int and not MIN_INT <= v <= MAX_INT:
                errs.append((f"metadata.{k}", _METADATA_INT))


def _has_non_finite(value: Any) -> bool:
    """True if a non-finite float hides in a JSON-like value (orjson.dumps writes them as null)."""
    t = type(value)
    if t is float:
        return value - value != 0.0
    if t is dict:
        return any(_has_non_finite(v) for v in value.values())
    if t is list or t is tuple:
        return any(_has_non_finite(v) for v in value)
    return False


# Strings that name things (ids, labels, keys) and free text, for the control-character check.
_ID_FIELDS: Final = ("user_id", "client_attempt_id", "session_id", "item_id", "placement_id", "level", "activity_type")
_ID_CONTROL = re.compile(r"[\x00-\x1f\x7f]").search
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]").search


def _needs_walk(blob: bytes) -> bool:
    """orjson escapes every C0 control as a backslash sequence and writes DEL as is; an event whose JSON has
    neither a backslash, DEL, nor a run of 16 digits (|n| may exceed 2**53) needs no walk for those."""
    return b"\\" in blob or b"\x7f" in blob or _has_digit_run(blob, 16)


def _content_errors(raw: dict[Any, Any], blob: bytes, errs: _Errors) -> None:
    """Refuse what a downstream store or format cannot hold: control characters (PostgreSQL text refuses NUL, and
    they break logs and headers), properties integers beyond 2**53 and properties nested deeper than protobuf
    consumers read. The slow path of _check, only for events whose JSON hints at one of them."""
    props = raw.get("properties")
    if not _needs_walk(blob) and (
        type(props) is not dict or blob.count(b"{") + blob.count(b"[") <= MAX_PROPERTIES_DEPTH
    ):
        return
    flagged = {path for path, _ in errs}
    for name in _ID_FIELDS:
        v = raw.get(name)
        if type(v) is str and name not in flagged and _ID_CONTROL(v) is not None:
            errs.append((name, _CONTROL_IN_ID))
    v = raw.get("response")
    if type(v) is str and "response" not in flagged and _TEXT_CONTROL(v) is not None:
        errs.append(("response", _CONTROL_IN_TEXT))
    md = raw.get("metadata")
    if isinstance(md, dict):
        for k, v in md.items():
            if type(k) is str and _ID_CONTROL(k) is not None:
                errs.append((f"metadata.{k!r}", _CONTROL_IN_KEY))
            elif type(v) is str and _TEXT_CONTROL(v) is not None:
                errs.append((f"metadata.{k}", _CONTROL_IN_TEXT))
    if isinstance(props, dict) and "properties" not in flagged:
        _walk_properties(props, "properties", 1, errs)


def _walk_properties(value: Any, path: str, level: int, errs: _Errors) -> None:
    if len(errs) > 100:  # enough to act on; a hostile document must not make an endless error list
        return
    t = type(value)
    if t is str:
        if _TEXT_CONTROL(value) is not None:
            errs.append((path, _CONTROL_IN_TEXT))
    elif t is int:
        if not -MAX_EXACT_PROPERTY_INT <= value <= MAX_EXACT_PROPERTY_INT:
            errs.append((path, "integers in properties must be between -2**53 and 2**53 (they travel as doubles)"))
    elif t is dict or t is list:
        if level > MAX_PROPERTIES_DEPTH:
            errs.append((path, f"properties must not nest objects and arrays more than {MAX_PROPERTIES_DEPTH} deep"))
            return
        if t is dict:
            for k, item in value.items():
                if type(k) is str and _ID_CONTROL(k) is not None:
                    errs.append((f"{path}.{k!r}", _CONTROL_IN_KEY))
                _walk_properties(item, f"{path}.{k}", level + 1, errs)
        else:
            for i, item in enumerate(value):
                _walk_properties(item, f"{path}[{i}]", level + 1, errs)


def _serialization_errors(raw: dict[Any, Any], errs: _Errors, exc: orjson.JSONEncodeError) -> None:
    """Attribute an orjson.dumps failure to top-level fields. Only reachable with non-JSON Python input
    (ints beyond 64 bits, non-string keys, lone surrogates, other types) or nesting orjson cannot write."""
    flagged = {path.partition(".")[0] for path, _ in errs}
    for k, v in raw.items():
        name = str(k)
        if name in flagged:
            continue
        try:
            orjson.dumps({"": v})  # wrapped, so nesting depth is the same as inside the event
        except orjson.JSONEncodeError as field_exc:
            errs.append((name, _unserializable(field_exc)))
    if not errs:
        errs.append(("", "event " + _unserializable(exc)))  # never let an unwritable event through


def _unserializable(exc: orjson.JSONEncodeError) -> str:
    if "ecursion" in str(exc):
        return "is nested too deeply"
    return f"must contain only JSON values ({exc})"


def _check(raw: Any, limit: str, new_id: _IdSource) -> ValidatedEvent | _Errors:
    """Validate one event against schema v1. ``limit``: the latest acceptable occurred_at, canonical text.

    Long on purpose: the ingest hot path, one pass with the common fields inline (see the module docstring)."""
    if not isinstance(raw, dict):
        return [("", "event must be a JSON object")]
    errs: _Errors = []
    get = raw.get

    sv = get("schema_version")
    if sv is not None:
        version = sv if type(sv) is int else _integral(sv)
        if version is None:
            errs.append(("schema_version", "must be an integer"))
        elif version != SCHEMA_VERSION:
            # The other fields of an unknown version cannot be judged by v1 rules.
            return [("schema_version", f"unsupported schema version {version}; supported: {SCHEMA_VERSION}")]

    event_type = get("event_type")
    if type(event_type) is str and event_type in _ALLOWED:
        allowed = _ALLOWED[event_type]
    else:
        errs.append(("event_type", _REQUIRED if event_type is None else f"must be one of {', '.join(EVENT_TYPES)}"))
        event_type = None
        allowed = _ANY_TYPE
    if not allowed.issuperset(raw):
        errs.extend((str(k), _UNKNOWN) for k in raw if k not in allowed)

    out: dict[str, Any] = {"event_type": event_type, "event_id": None, "schema_version": SCHEMA_VERSION}
    v = get("event_id")
    client_id = False
    if v is not None:
        if type(v) is str and _UUID(v) is not None and v != NIL_UUID:
            out["event_id"] = v.lower()
            client_id = True
        else:
            # The nil UUID would make every such event a duplicate of the first one.
            errs.append(
                ("event_id", "must be a UUID string like 0b5a8f9e-5c1d-4f6e-9a7b-2c3d4e5f6a7b (not the nil UUID)")
            )

    v = get("user_id")
    if type(v) is str and 0 < len(v) <= MAX_STRING_CHARS:
        out["user_id"] = v
    else:
        errs.append(("user_id", _REQUIRED if v is None else _STRING))

    v = get("occurred_at")
    ts = _timestamp(v)
    if ts is None:
        errs.append(("occurred_at", _REQUIRED if v is None else _TIMESTAMP))
    elif ts > limit:  # both canonical UTC text
        errs.append(("occurred_at", _FUTURE))
    else:
        out["occurred_at"] = ts

    if event_type is not None:
        _TYPE_CHECKS[event_type](get, out, errs)
    _check_metadata(get("metadata"), out, errs)

    # Size limits are on compact JSON, so serialise once; orjson is C, so this is cheap.
    try:
        blob = orjson.dumps(raw)
    except orjson.JSONEncodeError as exc:
        props = get("properties")
        if isinstance(props, dict) and event_type == "activity":
            _walk_properties(props, "properties", 1, errs)  # names the integer orjson cannot write, by path
        _serialization_errors(raw, errs, exc)
    else:
        if len(blob) > MAX_EVENT_BYTES:
            errs.append(("", f"event must be at most {MAX_EVENT_BYTES} bytes as compact JSON (got {len(blob)})"))
        else:
            _content_errors(raw, blob, errs)
        props = get("properties") if event_type == "activity" else None
        if isinstance(props, dict) and props:
            # properties is a substring of the event's JSON, so a small event needs no second dumps.
            if len(blob) > MAX_PROPERTIES_BYTES:
                size = len(orjson.dumps(props))
                if size > MAX_PROPERTIES_BYTES:
                    errs.append(
                        ("properties", f"must be at most {MAX_PROPERTIES_BYTES} bytes as compact JSON (got {size})")
                    )
            # orjson writes NaN/Infinity as null: only look deeper when a null is there at all.
            if b"null" in blob and _has_non_finite(props):
                errs.append(("properties", "must contain only finite numbers"))

    if errs:
        return errs
    if event_type == "attempt":
        dedup_key: str | None = attempt_dedup_key(out["user_id"], out["client_attempt_id"])
    elif client_id:
        dedup_key = f"{event_type}:{out['event_id']}"
    else:
        dedup_key = None
    if not client_id:
        out["event_id"] = new_id()  # only for valid events: invalid ones never need one
    return ValidatedEvent(out, dedup_key)


# --------------------------------------------------------------------------- public entry points


# The Redis key of a dedup mark is this prefix + the event's dedup key; the mark's value is the event id that
# holds it (ingestion sets them, the admin's Trace an event screen looks attempts up by them).
DEDUP_PREFIX = "ingest:dedup:"


def attempt_dedup_key(user_id: str, client_attempt_id: str) -> str:
    """An attempt's dedup key: per learner, since client apps number attempts per device ("1", "2", ...).
    The length prefix keeps ("a:b", "c") and ("a", "b:c") apart."""
    return f"attempt:{len(user_id)}:{user_id}:{client_attempt_id}"


def _future_limit(now: datetime | None) -> str:
    """now + MAX_FUTURE_SKEW as canonical text, so each event costs a string comparison."""
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=UTC)  # a naive "now" is taken to be UTC
    limit = (now + MAX_FUTURE_SKEW).astimezone(UTC).replace(tzinfo=None)
    return limit.isoformat(timespec="microseconds") + "Z"


def _field_errors(errs: _Errors, prefix: str) -> list[FieldError]:
    if not prefix:
        return [FieldError(path, message) for path, message in errs]
    return [FieldError(f"{prefix}.{path}" if path else prefix, message) for path, message in errs]


def _client_event_id(raw: Any) -> str | None:
    v = raw.get("event_id") if isinstance(raw, dict) else None
    return v.lower() if type(v) is str and _UUID(v) is not None and v != NIL_UUID else None


def validate_event(
    raw: Any, *, now: datetime | None = None, path_prefix: str = ""
) -> ValidatedEvent | list[FieldError]:
    """Validate and normalise one event; on failure return every error found, paths under ``path_prefix``."""
    result = _check(raw, _future_limit(now), _IdSource(1))
    if isinstance(result, ValidatedEvent):
        return result
    return _field_errors(result, path_prefix)


def validate_batch(body: Any, *, max_batch: int, now: datetime | None = None) -> BatchValidation:
    """Validate ``{"events": [...]}``. Body-level problems stop there; otherwise each event is judged
    on its own, so one bad event does not reject its neighbours."""
    if max_batch < 1:
        raise ValueError("max_batch must be at least 1")
    result = BatchValidation()
    if not isinstance(body, dict):
        result.body_errors.append(FieldError("", 'request body must be a JSON object like {"events": [...]}'))
        return result
    errors = result.body_errors
    errors.extend(FieldError(str(k), _UNKNOWN) for k in body if k != "events")
    events = body.get("events")
    if not isinstance(events, list):
        errors.append(FieldError("events", _REQUIRED if events is None else "must be an array of events"))
    elif not events:
        errors.append(FieldError("events", "must contain at least 1 event"))
    elif len(events) > max_batch:
        errors.append(FieldError("events", f"must contain at most {max_batch} events (got {len(events)})"))
    if errors or not isinstance(events, list):  # the isinstance is for mypy; errors is non-empty then
        return result
    _check_events(events, result, now)
    return result


def validate_ndjson_batch(body: bytes, *, max_batch: int, now: datetime | None = None) -> BatchValidation:
    """Validate an NDJSON batch: one event per line, blank lines ignored. Events are indexed as in a JSON batch
    (events[i], blank lines not counted); a line that is not JSON rejects that event only, like an invalid one."""
    if max_batch < 1:
        raise ValueError("max_batch must be at least 1")
    result = BatchValidation()
    lines = [(number, line) for number, line in enumerate(body.split(b"\n"), 1) if line.strip(b" \t\r")]
    if not lines:
        result.body_errors.append(FieldError("events", "must contain at least 1 event (one JSON object per line)"))
    elif len(lines) > max_batch:
        result.body_errors.append(FieldError("events", f"must contain at most {max_batch} events (got {len(lines)})"))
    if result.body_errors:
        return result
    events: list[Any] = []
    for number, line in lines:
        try:
            events.append(parse_json_body(line, subject=f"line {number}"))
        except BodyError as exc:
            events.append(_Unparsed(exc.message))
    _check_events(events, result, now)
    return result


class _Unparsed:
    """An NDJSON line that is not JSON: judged with the other events, rejected with the parser's message."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _check_events(events: list[Any], result: BatchValidation, now: datetime | None) -> None:
    limit = _future_limit(now)  # one clock read per batch: every event is judged against the same now
    new_id = _IdSource(len(events))
    valid = result.valid
    for i, raw in enumerate(events):
        if type(raw) is _Unparsed:
            result.invalid.append((i, None, [FieldError(f"events[{i}]", raw.message)]))
            continue
        checked = _check(raw, limit, new_id)
        if isinstance(checked, ValidatedEvent):
            valid.append((i, checked))
        else:
            result.invalid.append((i, _client_event_id(raw), _field_errors(checked, f"events[{i}]")))
