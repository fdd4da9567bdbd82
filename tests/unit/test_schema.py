"""Unit tests for events.schema, event schema v1 (no Django, no database).

Run: .venv/bin/python -m pytest -p no:django -p no:cacheprovider tests/unit/test_schema.py -q
"""

from __future__ import annotations

import copy
import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.limits import EVENT_TYPES, MAX_EVENT_BYTES
from events.schema import (
    BatchValidation,
    BodyError,
    FieldError,
    ValidatedEvent,
    attempt_dedup_key,
    parse_json_body,
    validate_batch,
    validate_event,
)

NOW = datetime(2026, 11, 27, 3, 40, 0, tzinfo=UTC)
PAST = "2026-11-27T03:38:52.123456Z"
CLIENT_ID = "0b5a8f9e-5c1d-4f6e-9a7b-2c3d4e5f6a7b"
DROP = object()  # marks a field to remove in the builders below


def _event(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    event = {**base, **overrides}
    return {k: v for k, v in event.items() if v is not DROP}


def attempt(**overrides: Any) -> dict[str, Any]:
    base = {
        "event_type": "attempt",
        "user_id": "user-1",
        "occurred_at": PAST,
        "client_attempt_id": "ca-1",
        "session_id": "sess-1",
        "item_id": "item-1",
        "correct": True,
        "quality": 4,
        "time_taken_ms": 1500,
    }
    return _event(base, overrides)


def session(**overrides: Any) -> dict[str, Any]:
    base = {
        "event_type": "session",
        "user_id": "user-1",
        "occurred_at": PAST,
        "session_id": "sess-1",
        "started_at": "2026-11-27T03:00:00Z",
    }
    return _event(base, overrides)


def placement(**overrides: Any) -> dict[str, Any]:
    base = {
        "event_type": "placement",
        "user_id": "user-1",
        "occurred_at": PAST,
        "placement_id": "pl-1",
        "completed": True,
    }
    return _event(base, overrides)


def activity(**overrides: Any) -> dict[str, Any]:
    base = {"event_type": "activity", "user_id": "user-1", "occurred_at": PAST, "activity_type": "video_watched"}
    return _event(base, overrides)


BUILDERS = {"attempt": attempt, "session": session, "placement": placement, "activity": activity}


def ok(raw: Any, **kwargs: Any) -> ValidatedEvent:
    result = validate_event(raw, now=kwargs.pop("now", NOW), **kwargs)
    assert isinstance(result, ValidatedEvent), result
    return result


def errors(raw: Any, **kwargs: Any) -> dict[str, str]:
    """path -> message; fails if the event is valid or a path is reported twice."""
    result = validate_event(raw, now=kwargs.pop("now", NOW), **kwargs)
    assert isinstance(result, list) and result, result
    assert all(isinstance(e, FieldError) for e in result)
    by_path = {e.path: e.message for e in result}
    assert len(by_path) == len(result), result
    return by_path


def assert_uuid4(value: Any) -> None:
    assert isinstance(value, str)
    parsed = uuid.UUID(value)
    assert str(parsed) == value  # canonical lowercase hyphenated form
    assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


# --------------------------------------------------------------------------- valid events


def test_valid_attempt_is_normalised() -> None:
    result = ok(attempt(event_id=CLIENT_ID.upper(), response="42", metadata={"app": "web", "n": 1.5, "beta": False}))
    assert result.data == {
        "event_type": "attempt",
        "event_id": CLIENT_ID,
        "schema_version": 1,
        "user_id": "user-1",
        "occurred_at": PAST,
        "client_attempt_id": "ca-1",
        "session_id": "sess-1",
        "item_id": "item-1",
        "correct": True,
        "quality": 4,
        "time_taken_ms": 1500,
        "response": "42",
        "metadata": {"app": "web", "n": 1.5, "beta": False},
    }
    # Attempts dedup on the learner's client attempt id, even when an event_id is supplied.
    assert result.dedup_key == attempt_dedup_key(result.data["user_id"], "ca-1")


def test_valid_session_fills_defaults() -> None:
    result = ok(session())
    assert_uuid4(result.data.pop("event_id"))
    assert result.data == {
        "event_type": "session",
        "schema_version": 1,
        "user_id": "user-1",
        "occurred_at": PAST,
        "session_id": "sess-1",
        "started_at": "2026-11-27T03:00:00.000000Z",
        "items_attempted": 0,
        "items_correct": 0,
        "metadata": {},
    }
    assert result.dedup_key is None  # no client event_id: nothing to dedup on


def test_valid_session_with_all_fields() -> None:
    result = ok(
        session(
            event_id=CLIENT_ID,
            ended_at="2026-11-27T04:25:31.25+01:00",
            items_attempted=20,
            items_correct=20,
            schema_version=1,
        )
    )
    assert result.data["ended_at"] == "2026-11-27T03:25:31.250000Z"
    assert (result.data["items_attempted"], result.data["items_correct"]) == (20, 20)
    assert result.dedup_key == f"session:{CLIENT_ID}"


def test_session_may_end_when_it_started() -> None:
    ok(session(ended_at="2026-11-27T03:00:00Z"))


@pytest.mark.parametrize("score", [0, 87, 0.82, -1.5, 1e300])
def test_valid_placement(score: float) -> None:
    result = ok(placement(score=score, level="B1", event_id=CLIENT_ID))
    assert result.data["score"] == score and type(result.data["score"]) is type(score)
    assert result.data["level"] == "B1"
    assert result.dedup_key == f"placement:{CLIENT_ID}"


def test_placement_optional_fields_are_omitted_when_absent() -> None:
    data = ok(placement()).data
    assert "score" not in data and "level" not in data


def test_valid_activity() -> None:
    props = {"video_id": "v-1", "seconds": 212, "nested": {"a": [1, None, "x"]}}
    result = ok(activity(properties=props))
    assert result.data["properties"] == props
    assert result.data["activity_type"] == "video_watched"
    assert result.dedup_key is None


def test_activity_properties_default_to_empty_object() -> None:
    assert ok(activity()).data["properties"] == {}


def test_input_is_not_modified() -> None:
    raw = attempt(quality=4.0, occurred_at="2026-11-27T05:38:52+02:00", metadata={"a": 1})
    before = copy.deepcopy(raw)
    ok(raw)
    assert raw == before


def test_normalised_data_is_json_ready_and_stable() -> None:
    for build in BUILDERS.values():
        data = ok(build()).data
        assert orjson.loads(orjson.dumps(data)) == data
        assert list(data)[:5] == ["event_type", "event_id", "schema_version", "user_id", "occurred_at"]
        assert list(data)[-1] in ("metadata",)


def test_null_optional_fields_are_treated_as_absent() -> None:
    data = ok(attempt(response=None, metadata=None, event_id=None, schema_version=None)).data
    assert "response" not in data and data["metadata"] == {} and data["schema_version"] == 1
    assert_uuid4(data["event_id"])
    assert "ended_at" not in ok(session(ended_at=None)).data
    assert "score" not in ok(placement(score=None, level=None)).data


def test_integral_floats_are_accepted_as_ints() -> None:
    data = ok(attempt(quality=4.0, time_taken_ms=1500.0, schema_version=1.0)).data
    assert (data["quality"], data["time_taken_ms"], data["schema_version"]) == (4, 1500, 1)
    assert type(data["quality"]) is int and type(data["time_taken_ms"]) is int
    data = ok(session(items_attempted=3.0, items_correct=2.0)).data
    assert type(data["items_attempted"]) is int and type(data["items_correct"]) is int


def test_string_length_boundaries_are_code_points() -> None:
    ok(attempt(user_id="u" * 128, client_attempt_id="é" * 128, item_id="😀" * 128))
    assert errors(attempt(user_id="u" * 129)) == {"user_id": "must be a string of 1 to 128 characters"}


def test_response_limit_is_utf8_bytes() -> None:
    ok(attempt(response=""))
    ok(attempt(response="a" * 4096))
    ok(attempt(response="é" * 2048))  # 4096 bytes
    expected = {"response": "must be a string of at most 4096 bytes in UTF-8"}
    assert errors(attempt(response="a" * 4097)) == expected
    assert errors(attempt(response="é" * 2049)) == expected  # 2049 characters but 4098 bytes
    assert errors(attempt(response="😀" * 1025)) == expected
    assert errors(attempt(response=42)) == expected


def test_metadata_limits() -> None:
    ok(attempt(metadata={f"k{i}": i for i in range(32)}))
    ok(attempt(metadata={"s": "x", "i": -3, "f": 0.5, "b": True, "": "empty key"}))
    assert errors(attempt(metadata={f"k{i}": i for i in range(33)})) == {
        "metadata": "must have at most 32 keys (got 33)"
    }
    message = "must be a string, a finite number or a boolean"
    assert errors(attempt(metadata={"ok": 1, "foo": {"a": 1}, "bar": [1], "baz": None})) == {
        "metadata.foo": message,
        "metadata.bar": message,
        "metadata.baz": message,
    }
    assert errors(attempt(metadata={"x": math.nan, "y": math.inf})) == {"metadata.x": message, "metadata.y": message}
    assert errors(attempt(metadata=["a"])) == {"metadata": "must be an object"}
    assert errors(attempt(metadata="a=b")) == {"metadata": "must be an object"}


# --------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("2026-11-27T03:38:52Z", "2026-11-27T03:38:52.000000Z"),
        ("2026-11-27T03:38:52.1Z", "2026-11-27T03:38:52.100000Z"),
        ("2026-11-27T03:38:52.123Z", "2026-11-27T03:38:52.123000Z"),  # JavaScript toISOString()
        ("2026-11-27T03:38:52.123456Z", "2026-11-27T03:38:52.123456Z"),
        ("2026-11-27T03:38:52.123456789Z", "2026-11-27T03:38:52.123456Z"),  # nanoseconds truncated
        ("2026-11-27T05:38:52+02:00", "2026-11-27T03:38:52.000000Z"),
        ("2026-11-27T05:38:52.5+02:00", "2026-11-27T03:38:52.500000Z"),
        ("2026-11-27T00:08:52.123456789-03:30", "2026-11-27T03:38:52.123456Z"),
        ("2026-11-27T03:38:52+00:00", "2026-11-27T03:38:52.000000Z"),
        ("2026-11-27T03:38:52-00:00", "2026-11-27T03:38:52.000000Z"),
        ("2026-11-27t03:38:52.5z", "2026-11-27T03:38:52.500000Z"),  # RFC 3339 allows lowercase
        ("2026-11-27t05:38:52+02:00", "2026-11-27T03:38:52.000000Z"),
        ("2026-11-27T01:00:00+02:00", "2026-11-26T23:00:00.000000Z"),  # crosses midnight
        ("2024-02-29T12:00:00Z", "2024-02-29T12:00:00.000000Z"),  # leap day
        ("2026-10-31T12:00:00.5Z", "2026-10-31T12:00:00.500000Z"),
        ("2024-03-01T01:00:00+02:00", "2024-02-29T23:00:00.000000Z"),
        ("1999-12-31T23:59:59.999999Z", "1999-12-31T23:59:59.999999Z"),
    ],
)
def test_timestamps_are_stored_as_utc(given: str, stored: str) -> None:
    assert ok(attempt(occurred_at=given)).data["occurred_at"] == stored
    assert ok(session(started_at=given)).data["started_at"] == stored


@pytest.mark.parametrize(
    "bad",
    [
        "2026-11-27T03:38:52",  # no offset
        "2026-11-27T03:38:52.123",
        "2026-11-27",
        "2026-11-27T03:38Z",  # no seconds
        "2026-11-27 03:38:52Z",  # space instead of T
        "20261127T033852Z",  # ISO 8601 basic format
        "2026-W48-5T03:38:52Z",
        "2026-11-27T03:38:52+0200",
        "2026-11-27T03:38:52+02",
        "2026-11-27T03:38:52,5Z",
        "2026-11-27T03:38:52.Z",
        "2026-02-30T03:38:52Z",
        "2026-02-29T03:38:52Z",  # not a leap year
        "2026-04-31T03:38:52+02:00",
        "2026-11-31T03:38:52Z",
        "2026-11-31T03:38:52.5-00:00",
        "2026-13-01T03:38:52Z",
        "2026-11-27T24:00:00Z",
        "2026-11-27T03:38:60Z",  # leap second
        "2026-11-27T03:38:52+24:00",
        "0000-01-01T00:00:00Z",
        "0001-01-01T00:00:00+01:00",  # year 0 in UTC
        "2026-11-27T03:38:52Z\n",
        " 2026-11-27T03:38:52Z",
        "\uff12\uff10\uff12\uff16-11-27T03:38:52Z",  # fullwidth (non-ASCII) digits
        "",
        1764214732,
        1764214732.5,
        True,
        ["2026-11-27T03:38:52Z"],
    ],
)
def test_bad_timestamps_are_rejected(bad: Any) -> None:
    message = "must be an RFC 3339 timestamp with a UTC offset, e.g. 2026-11-27T03:38:52Z"
    assert errors(attempt(occurred_at=bad)) == {"occurred_at": message}
    assert errors(session(started_at=bad)) == {"started_at": message}
    assert errors(session(ended_at=bad)) == {"ended_at": message}


def test_occurred_at_up_to_five_minutes_ahead_is_accepted() -> None:
    ok(attempt(occurred_at="2026-11-27T03:45:00Z"))  # exactly now + 5 min
    ok(attempt(occurred_at="2026-11-27T05:45:00+02:00"))
    ok(attempt(occurred_at="1990-01-01T00:00:00Z"))  # no lower bound


@pytest.mark.parametrize(
    "future",
    ["2026-11-27T03:45:00.000001Z", "2026-11-27T05:45:01+02:00", "2027-01-01T00:00:00Z", "9999-12-31T23:59:59Z"],
)
def test_occurred_at_more_than_five_minutes_ahead_is_rejected(future: str) -> None:
    assert errors(attempt(occurred_at=future)) == {"occurred_at": "is more than 5 minutes in the future"}


def test_now_defaults_to_the_clock_and_naive_now_is_utc() -> None:
    soon = (datetime.now(UTC) + timedelta(minutes=4)).isoformat()
    later = (datetime.now(UTC) + timedelta(minutes=6)).isoformat()
    assert isinstance(validate_event(attempt(occurred_at=soon)), ValidatedEvent)
    assert isinstance(validate_event(attempt(occurred_at=later)), list)
    naive = NOW.replace(tzinfo=None)
    ok(attempt(occurred_at="2026-11-27T03:45:00Z"), now=naive)
    errors(attempt(occurred_at="2026-11-27T03:45:01Z"), now=naive)
    ok(attempt(occurred_at="2026-11-27T03:45:00Z"), now=NOW.astimezone(UTC).astimezone())  # any aware now


def test_ended_at_must_not_precede_started_at() -> None:
    assert errors(session(ended_at="2026-11-27T02:59:59.999999Z")) == {
        "ended_at": "must not be earlier than started_at"
    }
    # Compared as instants, not as text: 04:30+02:00 is 02:30Z.
    assert errors(session(ended_at="2026-11-27T04:30:00+02:00")) == {"ended_at": "must not be earlier than started_at"}


# --------------------------------------------------------------------------- event_id and dedup


def test_generated_event_ids_are_fresh_uuid4s() -> None:
    ids = {ok(session()).data["event_id"] for _ in range(50)}
    assert len(ids) == 50
    for event_id in ids:
        assert_uuid4(event_id)


def test_client_event_id_is_kept_in_canonical_form() -> None:
    result = ok(activity(event_id=CLIENT_ID.upper()))
    assert result.data["event_id"] == CLIENT_ID
    assert result.dedup_key == f"activity:{CLIENT_ID}"
    v7 = "01936f2e-7c4b-7d2a-9a3b-4c5d6e7f8091"  # any UUID version is accepted
    assert ok(placement(event_id=v7)).dedup_key == f"placement:{v7}"


@pytest.mark.parametrize(
    "bad",
    [
        "not-a-uuid",
        "",
        CLIENT_ID.replace("-", ""),
        "{" + CLIENT_ID + "}",
        "urn:uuid:" + CLIENT_ID,
        CLIENT_ID + "\n",
        CLIENT_ID[:-1] + "g",
        "00000000-0000-0000-0000-000000000000",
        12345,
        True,
        {"id": CLIENT_ID},
    ],
)
def test_bad_event_ids_are_rejected(bad: Any) -> None:
    assert list(errors(session(event_id=bad))) == ["event_id"]


def test_dedup_keys() -> None:
    key = ok(attempt()).dedup_key
    assert key is not None and key == ok(attempt(event_id=CLIENT_ID)).dedup_key
    # Scoped per learner: another learner's attempt "ca-1" is a different attempt.
    assert ok(attempt(user_id="someone-else")).dedup_key != key
    # ...and the separator cannot be forged by moving it between the two ids.
    assert (
        ok(attempt(user_id="a:b", client_attempt_id="c")).dedup_key
        != ok(attempt(user_id="a", client_attempt_id="b:c")).dedup_key
    )
    for kind in ("session", "placement", "activity"):
        assert ok(BUILDERS[kind]()).dedup_key is None
        assert ok(BUILDERS[kind](event_id=CLIENT_ID)).dedup_key == f"{kind}:{CLIENT_ID}"


# --------------------------------------------------------------------------- rejections


@pytest.mark.parametrize("raw", [None, [], "attempt", 1, 1.5, True, [attempt()]])
def test_non_object_events_are_rejected(raw: Any) -> None:
    assert errors(raw) == {"": "event must be a JSON object"}
    assert errors(raw, path_prefix="events[4]") == {"events[4]": "event must be a JSON object"}


@pytest.mark.parametrize(
    ("event_type", "message"),
    [
        (DROP, "is required"),
        (None, "is required"),
        ("click", "must be one of attempt, session, placement, activity"),
        ("Attempt", "must be one of attempt, session, placement, activity"),
        (1, "must be one of attempt, session, placement, activity"),
        (["attempt"], "must be one of attempt, session, placement, activity"),
    ],
)
def test_bad_event_type(event_type: Any, message: str) -> None:
    # Common fields are still checked; type-specific fields are not judged without a type.
    assert errors(attempt(event_type=event_type, user_id="")) == {
        "event_type": message,
        "user_id": "must be a string of 1 to 128 characters",
    }


def test_unknown_fields_are_rejected() -> None:
    assert errors(attempt(foo=1, Quality=3)) == {"foo": "unknown field", "Quality": "unknown field"}
    # A field of another event type is unknown too.
    assert errors(attempt(score=0.5, started_at=PAST)) == {"score": "unknown field", "started_at": "unknown field"}
    # Without a valid event_type, only fields no type knows are reported.
    assert errors(placement(event_type="nope", score=1, bar=2)) == {
        "event_type": "must be one of attempt, session, placement, activity",
        "bar": "unknown field",
    }


@pytest.mark.parametrize(
    ("builder", "field", "value", "message"),
    [
        # common
        (attempt, "user_id", DROP, "is required"),
        (attempt, "user_id", None, "is required"),
        (attempt, "user_id", "", "must be a string of 1 to 128 characters"),
        (attempt, "user_id", 123, "must be a string of 1 to 128 characters"),  # ints are not strings
        (attempt, "user_id", True, "must be a string of 1 to 128 characters"),
        (attempt, "occurred_at", DROP, "is required"),
        (attempt, "schema_version", "1", "must be an integer"),
        (attempt, "schema_version", True, "must be an integer"),  # true is not 1
        (attempt, "schema_version", 1.5, "must be an integer"),
        # attempt
        (attempt, "client_attempt_id", DROP, "is required"),
        (attempt, "client_attempt_id", "x" * 129, "must be a string of 1 to 128 characters"),
        (attempt, "session_id", 7, "must be a string of 1 to 128 characters"),
        (attempt, "item_id", DROP, "is required"),
        (attempt, "correct", DROP, "is required"),
        (attempt, "correct", 1, "must be a boolean (true or false)"),
        (attempt, "correct", "true", "must be a boolean (true or false)"),
        (attempt, "quality", DROP, "is required"),
        (attempt, "quality", 6, "must be an integer between 0 and 5"),
        (attempt, "quality", -1, "must be an integer between 0 and 5"),
        (attempt, "quality", True, "must be an integer between 0 and 5"),  # true is not 1
        (attempt, "quality", False, "must be an integer between 0 and 5"),
        (attempt, "quality", 4.5, "must be an integer between 0 and 5"),  # fractions are not ints
        (attempt, "quality", "4", "must be an integer between 0 and 5"),
        (attempt, "quality", math.nan, "must be an integer between 0 and 5"),
        (attempt, "time_taken_ms", DROP, "is required"),
        (attempt, "time_taken_ms", -1, "must be an integer between 0 and 9223372036854775807"),
        (attempt, "time_taken_ms", 2**63, "must be an integer between 0 and 9223372036854775807"),
        (attempt, "time_taken_ms", 1.5, "must be an integer between 0 and 9223372036854775807"),
        (attempt, "time_taken_ms", math.inf, "must be an integer between 0 and 9223372036854775807"),
        (attempt, "time_taken_ms", True, "must be an integer between 0 and 9223372036854775807"),
        # session
        (session, "session_id", DROP, "is required"),
        (session, "started_at", DROP, "is required"),
        (session, "items_attempted", -1, "must be an integer between 0 and 9223372036854775807"),
        (session, "items_attempted", True, "must be an integer between 0 and 9223372036854775807"),
        (session, "items_correct", 0.5, "must be an integer between 0 and 9223372036854775807"),
        (session, "items_correct", 1, "must not exceed items_attempted"),  # items_attempted defaults to 0
        # placement
        (placement, "placement_id", DROP, "is required"),
        (placement, "placement_id", "", "must be a string of 1 to 128 characters"),
        (placement, "completed", DROP, "is required"),
        (placement, "completed", 0, "must be a boolean (true or false)"),
        (placement, "score", math.nan, "must be a finite number"),
        (placement, "score", math.inf, "must be a finite number"),
        (placement, "score", -math.inf, "must be a finite number"),
        (placement, "score", True, "must be a finite number"),
        (placement, "score", "0.5", "must be a finite number"),
        (placement, "level", "", "must be a string of 1 to 128 characters"),
        (placement, "level", 3, "must be a string of 1 to 128 characters"),
        # activity
        (activity, "activity_type", DROP, "is required"),
        (activity, "activity_type", "", "must be a string of 1 to 128 characters"),
        (activity, "properties", [1, 2], "must be an object"),
        (activity, "properties", "{}", "must be an object"),
    ],
)
def test_field_rules(builder: Any, field: str, value: Any, message: str) -> None:
    assert errors(builder(**{field: value})) == {field: message}


def test_items_correct_may_not_exceed_items_attempted() -> None:
    ok(session(items_attempted=5, items_correct=5))
    assert errors(session(items_attempted=5, items_correct=6)) == {"items_correct": "must not exceed items_attempted"}


def test_unsupported_schema_version_reports_only_that() -> None:
    # Other fields cannot be judged by v1 rules, so they are not reported.
    for version in (0, 2, 2.0, -1):
        assert errors(attempt(schema_version=version, quality=9, foo=1)) == {
            "schema_version": f"unsupported schema version {int(version)}; supported: 1"
        }


def test_all_errors_are_reported_at_once() -> None:
    raw = {
        "event_type": "attempt",
        "event_id": "nope",
        "user_id": 5,
        "occurred_at": "2026-11-27T03:38:52",
        "quality": True,
        "time_taken_ms": -5,
        "correct": "yes",
        "item_id": "",
        "response": 1,
        "metadata": {"a": [1]},
        "extra": 1,
    }
    assert set(errors(raw)) == {
        "event_id",
        "user_id",
        "occurred_at",
        "client_attempt_id",
        "session_id",
        "item_id",
        "correct",
        "quality",
        "time_taken_ms",
        "response",
        "metadata.a",
        "extra",
    }


def test_path_prefix_and_field_error_text() -> None:
    result = validate_event(attempt(quality=9), now=NOW, path_prefix="events[3]")
    assert result == [FieldError("events[3].quality", "must be an integer between 0 and 5")]
    assert isinstance(result, list)
    assert str(result[0]) == "events[3].quality: must be an integer between 0 and 5"
    assert result[0].as_dict() == {"path": "events[3].quality", "message": "must be an integer between 0 and 5"}
    assert str(FieldError("", "request body is empty")) == "request body is empty"


# --------------------------------------------------------------------------- sizes


def _padded(builder: Any, target: int) -> dict[str, Any]:
    """An event whose compact JSON is exactly ``target`` bytes, padded through metadata."""
    event = builder(metadata={"pad": ""})
    event["metadata"]["pad"] = "x" * (target - len(orjson.dumps(event)))
    assert len(orjson.dumps(event)) == target
    return event


def test_event_size_limit() -> None:
    ok(_padded(attempt, MAX_EVENT_BYTES))
    assert errors(_padded(attempt, MAX_EVENT_BYTES + 1)) == {
        "": f"event must be at most {MAX_EVENT_BYTES} bytes as compact JSON (got {MAX_EVENT_BYTES + 1})"
    }
    assert errors(_padded(session, 40_000), path_prefix="events[0]") == {
        "events[0]": f"event must be at most {MAX_EVENT_BYTES} bytes as compact JSON (got 40000)"
    }


def test_event_size_counts_escapes_as_sent_in_compact_json() -> None:
    # 6000 control characters are 36000 bytes once escaped as \u0001.
    assert list(errors(attempt(metadata={"x": "\x01" * 6000}))) == [""]


def _properties(size: int) -> dict[str, Any]:
    props = {"blob": ""}
    props["blob"] = "y" * (size - len(orjson.dumps(props)))
    assert len(orjson.dumps(props)) == size
    return props


def test_properties_size_limit() -> None:
    ok(activity(properties=_properties(8192)))
    assert errors(activity(properties=_properties(8193))) == {
        "properties": "must be at most 8192 bytes as compact JSON (got 8193)"
    }


def test_properties_over_both_limits_reports_both() -> None:
    assert set(errors(activity(properties=_properties(40_000)))) == {"", "properties"}


# --------------------------------------------------------------------------- values only Python can produce


def test_non_json_python_values_are_errors_not_exceptions() -> None:
    assert errors(activity(properties={"x": math.nan})) == {"properties": "must contain only finite numbers"}
    assert errors(activity(properties={"x": [1, {"y": -math.inf}]})) == {
        "properties": "must contain only finite numbers"
    }
    ok(activity(properties={"x": None, "y": [None]}))  # null is fine; only NaN/Infinity serialise as null
    assert list(errors(activity(properties={"x": 2**70}))) == ["properties.x"]
    assert list(errors(activity(properties={1: "x"}))) == ["properties"]
    assert list(errors(activity(properties={"x": {1, 2}}))) == ["properties"]
    assert list(errors(attempt(metadata={"big": 2**70}))) == ["metadata.big"]
    assert list(errors(attempt(user_id="\ud800"))) == ["user_id"]  # lone surrogate cannot be UTF-8
    assert list(errors({**attempt(), 7: "x"})) == ["7"]


def test_properties_nested_deeper_than_orjson_can_write() -> None:
    deep: Any = "leaf"
    for _ in range(300):
        deep = [deep]
    found = errors(activity(properties={"d": deep}))
    assert len(found) == 1 and next(iter(found)).startswith("properties.d"), found
    assert "more than 32 deep" in next(iter(found.values()))
    shallow: Any = "leaf"
    for _ in range(31):  # 32 levels with properties itself: the most a protobuf topic's consumers read
        shallow = [shallow]
    ok(activity(properties={"d": shallow}))


# --------------------------------------------------------------------------- batches


def test_batch_validates_each_event_on_its_own() -> None:
    body = {
        "events": [
            attempt(),
            attempt(quality=9, event_id=CLIENT_ID.upper()),
            "not an event",
            session(event_id="bad-id", items_correct=1),
            placement(),
        ]
    }
    result = validate_batch(body, max_batch=10, now=NOW)
    assert isinstance(result, BatchValidation)
    assert result.body_errors == []
    assert [i for i, _ in result.valid] == [0, 4]
    assert all(isinstance(event, ValidatedEvent) for _, event in result.valid)
    assert [(i, event_id) for i, event_id, _ in result.invalid] == [(1, CLIENT_ID), (2, None), (3, None)]
    assert result.invalid[0][2] == [FieldError("events[1].quality", "must be an integer between 0 and 5")]
    assert result.invalid[1][2] == [FieldError("events[2]", "event must be a JSON object")]
    assert {e.path for e in result.invalid[2][2]} == {"events[3].event_id", "events[3].items_correct"}


def test_batch_generates_distinct_event_ids() -> None:
    result = validate_batch({"events": [session() for _ in range(100)]}, max_batch=100, now=NOW)
    ids = [event.data["event_id"] for _, event in result.valid]
    assert len(set(ids)) == 100
    for event_id in ids:
        assert_uuid4(event_id)


def test_batch_judges_every_event_against_the_same_now() -> None:
    result = validate_batch({"events": [attempt(occurred_at="2026-11-27T03:45:00Z")]}, max_batch=1, now=NOW)
    assert len(result.valid) == 1
    result = validate_batch({"events": [attempt(occurred_at="2026-11-27T03:45:01Z")]}, max_batch=1, now=NOW)
    assert result.invalid[0][2] == [FieldError("events[0].occurred_at", "is more than 5 minutes in the future")]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ([], [FieldError("", 'request body must be a JSON object like {"events": [...]}')]),
        ([attempt()], [FieldError("", 'request body must be a JSON object like {"events": [...]}')]),
        ("events", [FieldError("", 'request body must be a JSON object like {"events": [...]}')]),
        (None, [FieldError("", 'request body must be a JSON object like {"events": [...]}')]),
        (42, [FieldError("", 'request body must be a JSON object like {"events": [...]}')]),
        ({}, [FieldError("events", "is required")]),
        ({"events": None}, [FieldError("events", "is required")]),
        ({"events": {"0": {}}}, [FieldError("events", "must be an array of events")]),
        ({"events": "x"}, [FieldError("events", "must be an array of events")]),
        ({"events": []}, [FieldError("events", "must contain at least 1 event")]),
        ({"events": [{}] * 4}, [FieldError("events", "must contain at most 3 events (got 4)")]),
        ({"events": [attempt()], "meta": 1}, [FieldError("meta", "unknown field")]),
        ({"event": [attempt()]}, [FieldError("event", "unknown field"), FieldError("events", "is required")]),
    ],
)
def test_batch_body_errors(body: Any, expected: list[FieldError]) -> None:
    result = validate_batch(body, max_batch=3, now=NOW)
    assert result.body_errors == expected
    assert result.valid == [] and result.invalid == []


def test_batch_accepts_exactly_max_batch_events() -> None:
    result = validate_batch({"events": [attempt()] * 3}, max_batch=3, now=NOW)
    assert len(result.valid) == 3 and not result.body_errors


def test_batch_rejects_oversized_event_by_index() -> None:
    result = validate_batch({"events": [attempt(), _padded(attempt, 33_000)]}, max_batch=10, now=NOW)
    assert [i for i, _ in result.valid] == [0]
    assert result.invalid == [
        (
            1,
            None,
            [FieldError("events[1]", f"event must be at most {MAX_EVENT_BYTES} bytes as compact JSON (got 33000)")],
        )
    ]


def test_batch_rejects_bad_max_batch() -> None:
    with pytest.raises(ValueError):
        validate_batch({"events": [attempt()]}, max_batch=0)


def test_batch_from_parsed_json() -> None:
    body = orjson.dumps({"events": [attempt(), activity(properties={"a": 1})]})
    result = validate_batch(parse_json_body(body), max_batch=2, now=NOW)
    assert len(result.valid) == 2


# --------------------------------------------------------------------------- request bodies


def test_parse_json_body_accepts_json_and_bytes_likes() -> None:
    assert parse_json_body(b'{"events": [1, 2.5, "x", null, true]}') == {"events": [1, 2.5, "x", None, True]}
    assert parse_json_body(bytearray(b"[1]")) == [1]
    assert parse_json_body(memoryview(b'"\\ud83d\\ude00"')) == "😀"  # a surrogate *pair* is fine
    nested = b"[" * 1024 + b"]" * 1024  # orjson's limit, inclusive
    assert parse_json_body(nested) is not None


def body_error(body: bytes) -> str:
    with pytest.raises(BodyError) as info:
        parse_json_body(body)
    assert isinstance(info.value, ValueError)
    assert str(info.value) == info.value.message
    return info.value.message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"events": [', "request body is not valid JSON: unexpected end of data at line 1 column 13 (char 12)"),
        (b'{"a": 1,}', "request body is not valid JSON"),
        (b"{'a': 1}", "request body is not valid JSON"),
        (b'{"a": 1} {"b": 2}', "unexpected content after document"),
        (b'{\n  "a": tru\n}', "at line 2"),
        (b"", "request body is empty"),
        (b" \r\n\t", "request body is empty"),
        (b"\xff", "request body is not valid UTF-8 (invalid byte at offset 0)"),
        (b'{"user_id": "ab\xc3"}', "request body is not valid UTF-8 (invalid byte at offset 15)"),
        (b'"\xed\xa0\x80"', "request body is not valid UTF-8"),  # a UTF-8-encoded surrogate
        (b"\xef\xbb\xbf{}", "byte order mark"),
        (b'"\\ud800"', "unpaired UTF-16 surrogate escape"),
        (b'{"a": "x\\udc00y"}', "unpaired UTF-16 surrogate escape"),
        (b'{"a": "\\ud800\\u0041"}', "unpaired UTF-16 surrogate escape"),
        (b"NaN", "NaN or Infinity"),
        (b'{"score": NaN}', "NaN or Infinity, which are not valid JSON numbers, at line 1 column 11 (char 10)"),
        (b"[Infinity]", "NaN or Infinity"),
        (b"[-Infinity]", "NaN or Infinity"),
        (b"1e999", "request body contains a number too large to represent (it overflows to infinity)"),
        (b'{"score": -1e999}', "overflows to infinity"),
        (b"[1E400]", "overflows to infinity"),
        (b"[" * 20_000 + b"]" * 20_000, "request body is nested too deeply (more than 1024 levels)"),
        (b"[" * 1025 + b"]" * 1025, "nested too deeply"),
    ],
)
def test_parse_json_body_errors(body: bytes, expected: str) -> None:
    assert expected in body_error(body)


def test_parse_json_body_error_chains_orjson_error() -> None:
    with pytest.raises(BodyError) as info:
        parse_json_body(b"{")
    assert isinstance(info.value.__cause__, orjson.JSONDecodeError)


# --------------------------------------------------------------------------- properties (hypothesis)

# Every JSON-like value, plus what JSON cannot hold but Python callers could pass: NaN/Infinity,
# integers beyond 64 bits, lone surrogates in strings.
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(st.characters(codec=None, exclude_categories=()), max_size=20)
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
)
FIELD_NAMES = sorted(
    {
        "event_type",
        "event_id",
        "user_id",
        "occurred_at",
        "schema_version",
        "metadata",
        "client_attempt_id",
        "session_id",
        "item_id",
        "correct",
        "quality",
        "time_taken_ms",
        "response",
        "started_at",
        "ended_at",
        "items_attempted",
        "items_correct",
        "placement_id",
        "completed",
        "score",
        "level",
        "activity_type",
        "properties",
        "unknown",
    }
)
field_values = (
    json_values
    | st.sampled_from(EVENT_TYPES)
    | st.sampled_from([PAST, "2026-11-27T05:38:52+02:00", "2099-01-01T00:00:00Z", CLIENT_ID, "ca-1"])
    | st.integers(min_value=-2, max_value=8)
)
# Valid events with some fields replaced, added or set to arbitrary values: reaches deep into every branch.
near_valid_events = st.builds(
    lambda build, changes, drop: {k: v for k, v in {**build(), **changes}.items() if k not in drop},
    st.sampled_from(list(BUILDERS.values())),
    st.dictionaries(st.sampled_from(FIELD_NAMES), field_values, max_size=4),
    st.sets(st.sampled_from(FIELD_NAMES), max_size=2),
)
quiet = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _check_result(result: Any) -> None:
    if isinstance(result, ValidatedEvent):
        data = result.data
        assert orjson.loads(orjson.dumps(data)) == data  # JSON-ready
        # Normalised data is itself valid and normalises to itself.
        again = validate_event(data, now=NOW)
        assert isinstance(again, ValidatedEvent) and again.data == data
    else:
        assert isinstance(result, list) and result
        assert all(isinstance(e, FieldError) and isinstance(e.path, str) and e.message for e in result)


@quiet
@given(json_values)
def test_arbitrary_values_never_raise(raw: Any) -> None:
    _check_result(validate_event(raw, now=NOW))


@quiet
@given(near_valid_events)
def test_near_valid_events_never_raise(raw: dict[str, Any]) -> None:
    _check_result(validate_event(raw, now=NOW))


@quiet
@given(st.one_of(json_values, st.builds(lambda events: {"events": events}, st.lists(near_valid_events, max_size=5))))
def test_arbitrary_batches_never_raise(body: Any) -> None:
    result = validate_batch(body, max_batch=4, now=NOW)
    if result.body_errors:
        assert not result.valid and not result.invalid
    else:
        indexes = sorted([i for i, _ in result.valid] + [i for i, _, _ in result.invalid])
        assert indexes == list(range(len(body["events"])))
        for i, _, errs in result.invalid:
            assert all(e.path == f"events[{i}]" or e.path.startswith(f"events[{i}].") for e in errs)


def _json_bytes(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return b"[]"


@quiet
@given(
    st.binary(max_size=64)
    | st.builds(_json_bytes, json_values)
    # Valid JSON with a few bytes changed, to get past the first character.
    | st.builds(
        lambda body, i, b: body[: i % (len(body) + 1)] + b + body[i % (len(body) + 1) + 1 :],
        st.builds(_json_bytes, json_values),
        st.integers(min_value=0),
        st.binary(min_size=1, max_size=3),
    )
)
def test_parse_json_body_raises_only_body_error(body: bytes) -> None:
    try:
        parse_json_body(body)
    except BodyError as exc:
        assert exc.message


# ---------------------------------------------------------------- what downstream stores and formats cannot hold

ID_FIELDS_BY_TYPE = {
    "attempt": ("user_id", "client_attempt_id", "session_id", "item_id"),
    "session": ("user_id", "session_id"),
    "placement": ("user_id", "placement_id", "level"),
    "activity": ("user_id", "activity_type"),
}


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x1b", "\x7f", "\t", "\n", "\r"])
@pytest.mark.parametrize(("kind", "name"), [(k, n) for k, names in ID_FIELDS_BY_TYPE.items() for n in names])
def test_control_characters_in_identifiers_are_refused(kind: str, name: str, char: str) -> None:
    # PostgreSQL text refuses NUL (a dead letter could never be stored); the others break keys, headers and logs.
    found = errors(BUILDERS[kind](**{name: f"a{char}b"}))
    assert "control characters" in found.get(name, ""), found


@pytest.mark.parametrize("char", ["\x00", "\x08", "\x1f", "\x7f"])
def test_control_characters_in_free_text_are_refused(char: str) -> None:
    assert "control characters" in errors(attempt(response=f"x{char}"))["response"]
    assert "control characters" in errors(activity(metadata={"note": f"x{char}"}))["metadata.note"]
    found = errors(activity(properties={"a": {"b": [f"x{char}"]}}))
    assert "control characters" in found["properties.a.b[0]"], found
    assert any("key must not contain" in m for m in errors(activity(properties={f"k{char}": 1})).values())
    assert any("key must not contain" in m for m in errors(activity(metadata={f"k{char}": 1})).values())


def test_tabs_and_line_breaks_stay_allowed_in_free_text() -> None:
    ok(attempt(response="line 1\nline 2\r\n\tindented"))
    ok(activity(metadata={"note": "a\tb"}, properties={"text": "a\nb", "path": "C:\\dir"}))


def test_integers_a_protobuf_topic_cannot_carry_are_refused_by_path() -> None:
    assert "int64" in errors(activity(metadata={"n": 2**63}))["metadata.n"]
    assert "int64" in errors(activity(metadata={"n": -(2**63) - 1}))["metadata.n"]
    ok(activity(metadata={"n": 2**63 - 1, "m": -(2**63)}))
    assert "int64" in errors(placement(score=2**63))["score"]
    ok(placement(score=-(2**63)))
    assert "2**53" in errors(activity(properties={"a": [1, 2**53 + 1]}))["properties.a[1]"]
    ok(activity(properties={"a": [2**53, -(2**53)]}))


def _nested(levels: int) -> dict[str, Any]:
    """A properties object whose containers nest `levels` deep, counting properties itself."""
    value: Any = 1
    for n in range(levels - 1):
        value = {"k": value} if n % 2 else [value]
    return {"deep": value}


def test_properties_nesting_is_bounded_as_protobuf_consumers_read_it() -> None:
    from events.serialization import encode_event

    accepted = ok(activity(properties=_nested(32)))
    encode_event(accepted.data, "protobuf")  # what the API accepts, a protobuf topic carries
    found = errors(activity(properties=_nested(33)))
    assert any("more than 32 deep" in m for m in found.values()), found


def test_integers_beyond_64_bits_are_not_turned_into_floats() -> None:
    # orjson would parse 2**64 as 1.8446744073709552e19 and the event would change silently.
    body = b'{"events": [{"metadata": {"n": 18446744073709551616}}]}'
    parsed = parse_json_body(body)
    assert parsed["events"][0]["metadata"]["n"] == 2**64
    ev = activity(metadata={"n": parsed["events"][0]["metadata"]["n"]})
    assert "int64" in errors(ev)["metadata.n"]
    # Twenty digits inside a string are not numbers and leave the value alone.
    assert parse_json_body(b'{"user_id": "123456789012345678901234"}') == {"user_id": "123456789012345678901234"}
