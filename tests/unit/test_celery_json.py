"""Celery's "json" serializer is orjson with kombu's encoder as the fallback (fast path celery_orjson), or kombu's
own when that is off; either way kombu's decoder reads both."""

from __future__ import annotations

import datetime
import decimal
from typing import Any

import pytest
from kombu import serialization
from kombu.exceptions import DecodeError
from kombu.utils import json as kombu_json

import config.celery  # noqa: F401  (registers the encoder when the fast path celery_orjson is on)
from fastpaths import celery_orjson

# Both sides: these tests go through the serializer registered for "json" in this run: the fast path's
# (orjson/msgspec) normally, kombu's own in CI's INGEST_FAST_PATHS=none run.


def test_the_registered_json_is_the_fast_paths_exactly_when_it_is_on() -> None:
    registered = serialization.registry._encoders["json"]
    assert (registered.encoder is celery_orjson.json_dumps) == celery_orjson.enabled()


def roundtrip(obj: Any) -> Any:
    content_type, encoding, payload = serialization.dumps(obj, serializer="json")
    assert (content_type, encoding) == ("application/json", "utf-8")
    assert isinstance(payload, str)
    return serialization.loads(payload, content_type, encoding, accept={"application/json"})


def test_a_task_body_of_events_survives_unchanged() -> None:
    events = [{"event_id": f"e-{i}", "quality": i % 6, "score": 0.5, "ok": True, "meta": None} for i in range(100)]
    body = ((), {"events": events, "source": "api-key", "accepted_at": 1764223200.123456}, {"callbacks": None})
    assert roundtrip(body) == [[], body[1], body[2]]  # JSON has no tuples, as with kombu's encoder


@pytest.mark.parametrize(
    "value",
    [
        datetime.datetime(2026, 11, 27, 6, 0, tzinfo=datetime.UTC),
        decimal.Decimal("1.10"),
        {1: "int keys"},
        2**70,
    ],
)
def test_what_orjson_would_encode_differently_goes_to_kombu(value: Any) -> None:
    assert roundtrip({"v": value}) == kombu_json.loads(kombu_json.dumps({"v": value}))


@pytest.mark.parametrize(
    "text",
    [
        '{"v": 123456789012345678901234567890}',  # beyond 64 bits: exact, as the standard library keeps it
        '{"v": -18446744073709551617, "w": 0.1, "s": "caf\\u00e9 \\ud83d\\ude00"}',
        '{"v": NaN}',  # msgspec refuses it; kombu's decoder reads it
        '{"v": "\\ud800"}',  # a lone surrogate, likewise
        '{"v": {"__type__": "datetime", "__value__": "2026-11-27T06:00:00+00:00"}}',  # kombu's typed value
    ],
)
def test_the_decoder_gives_what_kombus_gives(text: str) -> None:
    expected = kombu_json.loads(text)
    for data in (text, text.encode(), memoryview(text.encode()), bytearray(text.encode())):
        decoded = serialization.loads(data, "application/json", "utf-8", accept={"application/json"})
        assert repr(decoded) == repr(expected)  # repr: NaN != NaN, and int vs float must not pass as equal


def test_the_decoder_refuses_what_is_not_json() -> None:
    with pytest.raises(DecodeError, match="Expecting value"):  # kombu's error, as before
        serialization.loads('{"v": ', "application/json", "utf-8", accept={"application/json"})
