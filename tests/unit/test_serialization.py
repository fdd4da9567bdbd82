"""Unit tests for events.serialization (no Django, no database).

Run: .venv/bin/python -m pytest -p no:django -p no:cacheprovider tests/unit/test_serialization.py -q
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events.generated import events_pb2
from events.limits import MAX_PROPERTIES_DEPTH
from events.serialization import (
    CONTENT_TYPES,
    FORMATS,
    JSON,
    PROTOBUF,
    SCHEMA_NAMES,
    SerializationError,
    decode_value,
    encode_event,
    schema_name,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

COMMON = {
    "event_id": "3f0c6b0e-8f5a-4d8e-9a43-6a1f2b7c9d10",
    "user_id": "user-42",
    "occurred_at": "2024-05-06T07:08:09.123456Z",
    "schema_version": 1,
}

ALL_METADATA = {"app": "ios", "build": 1234, "ratio": 0.25, "beta": True, "off": False, "zero": 0, "whole": 3.0}


def make(event_type: str, **fields: Any) -> dict[str, Any]:
    return {"event_type": event_type, **COMMON, **fields}


ATTEMPT_MIN = make(
    "attempt",
    client_attempt_id="ca-1",
    session_id="s-1",
    item_id="item-9",
    correct=False,
    quality=0,
    time_taken_ms=0,
)
ATTEMPT_FULL = {**ATTEMPT_MIN, "correct": True, "quality": 5, "time_taken_ms": 2**63 - 1, "response": "résumé ✓"}
SESSION_MIN = make(
    "session", session_id="s-1", started_at="2024-05-06T07:00:00.000000Z", items_attempted=0, items_correct=0
)
SESSION_FULL = {**SESSION_MIN, "ended_at": "2024-05-06T07:30:00.000001Z", "items_attempted": 12, "items_correct": 9}
PLACEMENT_MIN = make("placement", placement_id="p-1", completed=False)
PLACEMENT_FULL = {**PLACEMENT_MIN, "completed": True, "score": 87.5, "level": "B2"}
ACTIVITY_MIN = make("activity", activity_type="lesson_opened")
ACTIVITY_FULL = {
    **ACTIVITY_MIN,
    "properties": {
        "lesson": {"id": "l-7", "tags": ["verbs", "past"], "meta": {"depth": {"deeper": [1, [2, [3, None]]]}}},
        "count": 3,
        "negative": -17,
        "ratio": 0.5,
        "tiny": 1e-300,
        "flag": False,
        "nothing": None,
        "empty_obj": {},
        "empty_list": [],
        "mixed": [1, "two", 3.5, True, None, {"k": "v"}, []],
        "unicode": "日本語 🎌",
        "max_exact": 2**53,
        "min_exact": -(2**53),
    },
}

EVENTS = {
    "attempt_min": ATTEMPT_MIN,
    "attempt_full": ATTEMPT_FULL,
    "attempt_empty_response": {**ATTEMPT_MIN, "response": ""},
    "session_min": SESSION_MIN,
    "session_full": SESSION_FULL,
    "session_max_counts": {**SESSION_FULL, "items_attempted": 2**63 - 1, "items_correct": 2**63 - 1},
    "placement_min": PLACEMENT_MIN,
    "placement_full": PLACEMENT_FULL,
    "placement_int_score": {**PLACEMENT_MIN, "score": 7},
    "placement_zero_score": {**PLACEMENT_MIN, "score": 0},
    "placement_zero_float_score": {**PLACEMENT_MIN, "score": 0.0},
    "placement_level_only": {**PLACEMENT_MIN, "level": "A1"},
    "activity_min": ACTIVITY_MIN,
    "activity_full": ACTIVITY_FULL,
    "activity_empty_properties": {**ACTIVITY_MIN, "properties": {}},
    "attempt_metadata": {**ATTEMPT_FULL, "metadata": ALL_METADATA},
    "session_empty_metadata": {**SESSION_FULL, "metadata": {}},
    "placement_metadata": {**PLACEMENT_FULL, "metadata": {"source": "web"}},
    "activity_metadata": {**ACTIVITY_FULL, "metadata": {"n": -(2**63), "big": 2**63 - 1, "s": "ü"}},
}


def typed(value: Any) -> Any:
    """Make comparisons type-exact: plain == treats 1, 1.0 and True as equal."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [typed(item) for item in value]
    return (type(value).__name__, value)


def roundtrip(event: dict[str, Any], fmt: str) -> dict[str, Any]:
    payload = encode_event(event, fmt)
    assert isinstance(payload, bytes)
    return decode_value(payload, content_type=CONTENT_TYPES[fmt], schema=schema_name(event["event_type"], fmt))


# ---------------------------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", sorted(EVENTS))
def test_roundtrip_is_exact(name: str, fmt: str) -> None:
    event = EVENTS[name]
    original = copy.deepcopy(event)
    decoded = roundtrip(event, fmt)
    assert typed(decoded) == typed(event)
    assert event == original  # encoding must not mutate the caller's dict


@pytest.mark.parametrize(
    "ts",
    [
        "2024-05-06T07:08:09.000000Z",  # whole seconds: the normalizer keeps the fixed-width fraction
        "2024-05-06T07:08:09.000001Z",
        "2024-05-06T07:08:09.999999Z",
        "2024-05-06T07:08:09.100000Z",
        "1970-01-01T00:00:00.000000Z",
        "1969-12-31T23:59:59.500000Z",  # negative seconds, positive nanos
        "0001-01-01T00:00:00.000000Z",
        "9999-12-31T23:59:59.999999Z",
    ],
)
def test_timestamp_precision_roundtrips(ts: str) -> None:
    event = {**SESSION_FULL, "occurred_at": ts, "started_at": ts, "ended_at": ts}
    for fmt in FORMATS:
        assert roundtrip(event, fmt) == event


def test_microseconds_reach_the_wire() -> None:
    message = events_pb2.AttemptEvent.FromString(encode_event(ATTEMPT_FULL, PROTOBUF))
    assert message.occurred_at.seconds == 1714979289
    assert message.occurred_at.nanos == 123456000


@pytest.mark.parametrize(
    ("sent", "decoded"),
    [
        ("2024-05-06T07:08:09Z", "2024-05-06T07:08:09.000000Z"),
        ("2024-05-06T07:08:09+00:00", "2024-05-06T07:08:09.000000Z"),
        ("2024-05-06T07:08:09.120Z", "2024-05-06T07:08:09.120000Z"),
        ("2024-05-06T09:08:09.5+02:00", "2024-05-06T07:08:09.500000Z"),
    ],
)
def test_non_canonical_timestamps_keep_the_instant_and_decode_canonically(sent: str, decoded: str) -> None:
    assert roundtrip({**ATTEMPT_MIN, "occurred_at": sent}, PROTOBUF)["occurred_at"] == decoded


def test_nanosecond_timestamps_from_other_producers_keep_full_precision() -> None:
    message = events_pb2.AttemptEvent.FromString(encode_event(ATTEMPT_MIN, PROTOBUF))
    message.occurred_at.nanos = 123456789
    decoded = decode_value(
        message.SerializeToString(), content_type=CONTENT_TYPES[PROTOBUF], schema=SCHEMA_NAMES["attempt"]
    )
    assert decoded["occurred_at"] == "2024-05-06T07:08:09.123456789Z"


@pytest.mark.parametrize(
    "value",
    ["", "text", "ünïcödé 🚀", 0, 1, -1, 2**63 - 1, -(2**63), 0.0, -0.0, 1.5, 3.0, 1e308, 5e-324, True, False],
)
def test_metadata_value_types_roundtrip_exactly(value: Any) -> None:
    event = {**ATTEMPT_MIN, "metadata": {"k": value}}
    for fmt in FORMATS:
        assert typed(roundtrip(event, fmt)) == typed(event)


def test_metadata_absent_and_empty_stay_distinct() -> None:
    assert "metadata" not in roundtrip(ATTEMPT_MIN, PROTOBUF)
    assert roundtrip({**ATTEMPT_MIN, "metadata": {}}, PROTOBUF)["metadata"] == {}


def test_none_optional_fields_are_encoded_as_unset() -> None:
    event = {**ATTEMPT_MIN, "response": None, "metadata": None}
    assert roundtrip(event, PROTOBUF) == ATTEMPT_MIN


def test_score_keeps_int_vs_float_on_the_wire() -> None:
    as_int = events_pb2.PlacementEvent.FromString(encode_event({**PLACEMENT_MIN, "score": 7}, PROTOBUF))
    as_float = events_pb2.PlacementEvent.FromString(encode_event({**PLACEMENT_MIN, "score": 7.0}, PROTOBUF))
    assert as_int.WhichOneof("score") == "score_int"
    assert as_float.WhichOneof("score") == "score_double"
    assert type(roundtrip({**PLACEMENT_MIN, "score": 7.0}, PROTOBUF)["score"]) is float


def test_properties_integral_floats_come_back_as_int() -> None:
    # Documented limitation of google.protobuf.Struct: one number type. Integral values decode as int
    # (what a JSON parser returns for "2"), so equality still holds.
    decoded = roundtrip({**ACTIVITY_MIN, "properties": {"x": 2.0, "y": 2.5}}, PROTOBUF)
    assert decoded["properties"] == {"x": 2, "y": 2.5}
    assert type(decoded["properties"]["x"]) is int


def test_properties_at_max_depth_are_decodable() -> None:
    nested: dict[str, Any] = {"leaf": 1}
    for _ in range(MAX_PROPERTIES_DEPTH - 1):
        nested = {"n": nested}
    event = {**ACTIVITY_MIN, "properties": nested}
    assert roundtrip(event, PROTOBUF) == event


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.text(max_size=8),
    # Integral floats come back as int from a Struct (see the test above), so generate only non-integral ones.
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)
metadata_values = st.text(max_size=10) | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.booleans()


@settings(max_examples=200, database=None, deadline=None)
@given(
    properties=st.dictionaries(st.text(max_size=6), json_values, max_size=5),
    metadata=st.none() | st.dictionaries(st.text(max_size=6), metadata_values, max_size=5),
)
def test_activity_roundtrip_property(properties: dict[str, Any], metadata: dict[str, Any] | None) -> None:
    event = {**ACTIVITY_MIN, "properties": properties}
    if metadata is not None:
        event["metadata"] = metadata
    assert typed(roundtrip(event, PROTOBUF)) == typed(event)
    # JSON cannot carry infinities (orjson writes null), so only compare it for finite metadata.
    if all(not isinstance(v, float) or abs(v) != float("inf") for v in (metadata or {}).values()):
        assert typed(roundtrip(event, JSON)) == typed(event)


# ---------------------------------------------------------------------------------------------------------------
# Encodings
# ---------------------------------------------------------------------------------------------------------------


def test_json_is_compact_utf8_with_non_ascii_kept() -> None:
    event = {**ATTEMPT_FULL, "metadata": {"città": "Zürich", "emoji": "🎉", "n": 1, "x": 0.5}}
    payload = encode_event(event, JSON)
    assert payload == json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert "Zürich".encode() in payload
    assert b"\\u" not in payload
    assert b": " not in payload and b", " not in payload and b"\n" not in payload


def test_protobuf_is_deterministic_regardless_of_dict_order() -> None:
    a = {**ACTIVITY_FULL, "metadata": {"a": 1, "b": "x", "c": True}}
    b = {**ACTIVITY_FULL, "metadata": {"c": True, "b": "x", "a": 1}}
    b["properties"] = dict(reversed(list(ACTIVITY_FULL["properties"].items())))
    assert encode_event(a, PROTOBUF) == encode_event(b, PROTOBUF)


def test_protobuf_payload_is_the_typed_message_and_envelope_decodes() -> None:
    for event_type, event in [("attempt", ATTEMPT_FULL), ("session", SESSION_FULL), ("activity", ACTIVITY_FULL)]:
        payload = encode_event(event, PROTOBUF)
        message = getattr(events_pb2, SCHEMA_NAMES[event_type].rsplit(".", 1)[1]).FromString(payload)
        envelope = events_pb2.EventEnvelope(**{event_type: message}).SerializeToString()
        decoded = decode_value(envelope, content_type=CONTENT_TYPES[PROTOBUF], schema="ingestion.v1.EventEnvelope")
        assert decoded == event


def test_schema_names_and_content_types() -> None:
    assert FORMATS == (JSON, PROTOBUF) == ("json", "protobuf")
    assert CONTENT_TYPES == {"json": "application/json", "protobuf": "application/x-protobuf"}
    descriptors = {
        "attempt": events_pb2.AttemptEvent.DESCRIPTOR.full_name,
        "session": events_pb2.SessionEvent.DESCRIPTOR.full_name,
        "placement": events_pb2.PlacementEvent.DESCRIPTOR.full_name,
        "activity": events_pb2.ActivityEvent.DESCRIPTOR.full_name,
    }
    assert dict(SCHEMA_NAMES) == descriptors
    for event_type, name in SCHEMA_NAMES.items():
        assert name.startswith("ingestion.v1.")
        assert schema_name(event_type, JSON) == schema_name(event_type, PROTOBUF) == name


def test_decode_ignores_content_type_parameters() -> None:
    payload = encode_event(ATTEMPT_MIN, JSON)
    decoded = decode_value(payload, content_type="application/json; charset=utf-8", schema=SCHEMA_NAMES["attempt"])
    assert decoded == ATTEMPT_MIN


# ---------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        pytest.param({**ATTEMPT_MIN, "time_taken_ms": 2**70}, id="int64-overflow"),
        pytest.param({**ATTEMPT_MIN, "quality": -1}, id="uint32-negative"),
        pytest.param({**ATTEMPT_MIN, "quality": "5"}, id="wrong-type"),
        pytest.param({k: v for k, v in ATTEMPT_MIN.items() if k != "item_id"}, id="missing-field"),
        pytest.param({**ATTEMPT_MIN, "event_type": "unknown"}, id="unknown-event-type"),
        pytest.param({**ATTEMPT_MIN, "event_type": ["attempt"]}, id="unhashable-event-type"),
        pytest.param({**ATTEMPT_MIN, "item_id": "\ud800"}, id="lone-surrogate"),
        pytest.param({**ATTEMPT_MIN, "occurred_at": "2024-05-06T07:08:09"}, id="naive-timestamp"),
        pytest.param({**ATTEMPT_MIN, "occurred_at": "yesterday"}, id="bad-timestamp"),
        pytest.param({**ATTEMPT_MIN, "metadata": {"k": 2**64}}, id="metadata-int-overflow"),
        pytest.param({**ATTEMPT_MIN, "metadata": {"k": [1]}}, id="metadata-not-flat"),
        pytest.param({**ATTEMPT_MIN, "metadata": {"k": None}}, id="metadata-null"),
        pytest.param({**ATTEMPT_MIN, "metadata": {1: "x"}}, id="metadata-int-key"),
        pytest.param({**PLACEMENT_MIN, "score": "high"}, id="score-string"),
        pytest.param({**PLACEMENT_MIN, "score": True}, id="score-bool"),
        pytest.param({**ACTIVITY_MIN, "properties": {"n": 2**53 + 1}}, id="properties-inexact-int"),
        pytest.param({**ACTIVITY_MIN, "properties": {"s": {1, 2}}}, id="properties-not-json"),
        pytest.param({**ACTIVITY_MIN, "properties": {1: "x"}}, id="properties-int-key"),
        pytest.param({**ACTIVITY_MIN, "properties": [1, 2]}, id="properties-not-object"),
    ],
)
def test_unencodable_protobuf_raises_serialization_error(event: dict[str, Any]) -> None:
    with pytest.raises(SerializationError):
        encode_event(event, PROTOBUF)


def test_properties_too_deep_for_protobuf_parsers_is_refused() -> None:
    nested: dict[str, Any] = {"leaf": 1}
    for _ in range(MAX_PROPERTIES_DEPTH):
        nested = {"n": nested}
    with pytest.raises(SerializationError, match="nested deeper"):
        encode_event({**ACTIVITY_MIN, "properties": nested}, PROTOBUF)


@pytest.mark.parametrize(
    "event",
    [
        pytest.param({**ATTEMPT_MIN, "time_taken_ms": 2**70}, id="int-beyond-64-bit"),
        pytest.param({**ATTEMPT_MIN, "item_id": "\ud800"}, id="lone-surrogate"),
        pytest.param({**ATTEMPT_MIN, "metadata": {"k": object()}}, id="not-json"),
    ],
)
def test_unencodable_json_raises_serialization_error(event: dict[str, Any]) -> None:
    with pytest.raises(SerializationError):
        encode_event(event, JSON)


def test_unknown_format_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown format"):
        encode_event(ATTEMPT_MIN, "avro")
    with pytest.raises(ValueError, match="unknown format"):
        schema_name("attempt", "avro")
    with pytest.raises(SerializationError):
        schema_name("unknown", JSON)


@pytest.mark.parametrize(
    ("value", "content_type", "schema"),
    [
        (b"\xff\xff\xff", CONTENT_TYPES[PROTOBUF], "ingestion.v1.AttemptEvent"),
        (b"", CONTENT_TYPES[PROTOBUF], "ingestion.v1.NoSuchEvent"),
        (b"", CONTENT_TYPES[PROTOBUF], "ingestion.v1.EventEnvelope"),
        (b"{", CONTENT_TYPES[JSON], "ingestion.v1.AttemptEvent"),
        (b"[1]", CONTENT_TYPES[JSON], "ingestion.v1.AttemptEvent"),
        (b"{}", "text/plain", "ingestion.v1.AttemptEvent"),
    ],
)
def test_undecodable_payloads_raise_serialization_error(value: bytes, content_type: str, schema: str) -> None:
    with pytest.raises(SerializationError):
        decode_value(value, content_type=content_type, schema=schema)


# ---------------------------------------------------------------------------------------------------------------
# Generated code
# ---------------------------------------------------------------------------------------------------------------


def test_checked_in_generated_code_matches_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-Ievents/proto/ingestion/v1",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            "events/proto/ingestion/v1/events.proto",
        ],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    )
    for name in ("events_pb2.py", "events_pb2.pyi"):
        fresh = (tmp_path / name).read_bytes()
        checked_in = (REPO_ROOT / "events" / "generated" / name).read_bytes()
        assert fresh == checked_in, f"events/generated/{name} is stale: run scripts/gen_proto.sh"


def test_generated_module_does_not_import_the_ingestion_package() -> None:
    source = (REPO_ROOT / "events" / "generated" / "events_pb2.py").read_text()
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert imports and all(line.startswith("from google.protobuf") for line in imports)
