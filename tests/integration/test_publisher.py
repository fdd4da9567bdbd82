"""Publishing on the real stack: formats, headers, keys, ordering, permanent errors to the DLQ."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from events.schema import validate_event
from events.serialization import decode_value
from publisher.models import DeadLetter, RetryPolicy
from publisher.services import publish_batch
from routing.models import RoutingRule, Topic
from tests import factories
from tests.conftest import KafkaReader, create_topic

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[2]


def valid(event: dict[str, Any]) -> dict[str, Any]:
    checked = validate_event(event)
    assert not isinstance(checked, list), checked
    return checked.data


def route_activities(activity_type: str, topic_name: str, fmt: str = "json") -> None:
    topic, _ = Topic.objects.get_or_create(name=topic_name, defaults={"format": fmt})
    rule = RoutingRule.objects.create(
        name=f"test {activity_type}", event_type="activity", pattern={"activity_type": [activity_type]}, priority=1
    )
    rule.destinations.set([topic])


def test_protobuf_topic_records_decode_with_the_published_schema(default_routing: None, kafka_reader: Any) -> None:
    create_topic("test.protobuf")
    route_activities("proto-test", "test.protobuf", fmt="protobuf")
    reader: KafkaReader = kafka_reader("test.protobuf", "user.activities")
    event = valid(
        factories.activity(activity_type="proto-test", metadata={"app": "ios", "build": 7, "beta": True, "r": 0.5})
    )

    result = publish_batch(events=[event], source="proto")

    assert result.published == 2
    records = {r.topic: r for r in reader.read(expected=2) if r.headers["event_id"] == event["event_id"].encode()}
    proto = records["test.protobuf"]
    assert proto.headers["content-type"] == b"application/x-protobuf"
    assert proto.headers["schema"] == b"ingestion.v1.ActivityEvent"
    decoded = decode_value(proto.value, content_type="application/x-protobuf", schema="ingestion.v1.ActivityEvent")
    assert decoded == event
    as_json = records["user.activities"]
    assert as_json.headers["content-type"] == b"application/json"
    assert orjson.loads(as_json.value) == event


def test_one_learners_events_stay_in_order_in_one_partition(default_routing: None, kafka_reader: Any) -> None:
    reader = kafka_reader("user.activities")
    user = f"ordered-{uuid.uuid4().hex[:6]}"
    events = [valid(factories.activity(user_id=user, properties={"seq": i})) for i in range(40)]

    publish_batch(events=events, source="order")

    mine = [r for r in reader.read(expected=40) if r.key == user.encode()]
    assert len(mine) == 40
    assert len({r.partition for r in mine}) == 1
    assert [orjson.loads(r.value)["properties"]["seq"] for r in sorted(mine, key=lambda r: r.offset)] == list(range(40))


def test_record_too_large_goes_to_the_dlq_at_once_with_every_header(default_routing: None, kafka_reader: Any) -> None:
    create_topic("test.small-messages", **{"max.message.bytes": "1024"})
    route_activities("too-big", "test.small-messages")
    reader = kafka_reader("dlq.events", "user.activities", "test.small-messages")
    noise = base64.b64encode(os.urandom(5000)).decode()  # incompressible, so compression can't save it
    event = valid(factories.activity(activity_type="too-big", properties={"blob": noise}))

    result = publish_batch(events=[event], source="big")

    assert result.published == 1  # user.activities took it
    assert result.dead_lettered == 1
    assert result.retries == 0  # permanent: no retries
    records = [r for r in reader.read(expected=2) if r.headers.get("event_id") == event["event_id"].encode()]
    by_topic: dict[str, list[Any]] = {}
    for r in records:
        by_topic.setdefault(r.topic, []).append(r)
    assert len(by_topic["user.activities"]) == 1
    assert "test.small-messages" not in by_topic
    (dead,) = by_topic["dlq.events"]
    assert dead.key == event["user_id"].encode()
    assert orjson.loads(dead.value) == event
    headers = dead.headers
    for name in ("event_type", "event_id", "schema_version", "content-type", "schema", "ingested_at", "source"):
        assert name in headers, name
    assert headers["dlq_reason"] == b"permanent_error"
    assert headers["original_topic"] == b"test.small-messages"
    assert headers["dlq_error_class"] == b"MessageSizeTooLargeError"
    assert headers["dlq_attempts"] == b"1"
    assert headers["dlq_replay_count"] == b"0"
    assert headers["dlq_timestamp"].endswith(b"Z")
    assert headers["__connect.errors.topic"] == b"test.small-messages"
    assert headers["__connect.errors.exception.class.name"].endswith(b"MessageSizeTooLargeError")
    assert headers["__connect.errors.exception.message"]

    row = DeadLetter.objects.get(event_id=event["event_id"])
    assert row.original_topic == "test.small-messages"
    assert row.status == DeadLetter.Status.PENDING
    assert row.reason == DeadLetter.Reason.PERMANENT_ERROR
    assert row.error_class == "MessageSizeTooLargeError"
    assert row.attempts == 1
    assert row.payload == event
    assert bytes(row.value) == dead.value
    assert row.in_kafka_dlq is True
    assert row.key == event["user_id"]
    assert row.first_failed_at and row.last_failed_at


def test_unrouted_events_are_counted_not_errors(default_routing: None) -> None:
    event = valid(factories.session(items_attempted=0, items_correct=0))  # the seed routes only items > 0
    result = publish_batch(events=[event], source="t")
    assert (result.published, result.dead_lettered, result.unrouted) == (0, 0, 1)


def test_retry_policy_defaults_and_backoff(db: Any) -> None:
    policy = RetryPolicy.get_solo()
    assert (policy.initial_delay_ms, policy.max_delay_ms, policy.backoff_factor, policy.max_retries) == (
        100,
        5000,
        2.0,
        3,
    )
    policy.jitter = False
    assert [policy.delay_seconds(n) for n in (1, 2, 3, 4, 10)] == [0.1, 0.2, 0.4, 0.8, 5.0]
    policy.jitter = True
    assert all(0.05 <= policy.delay_seconds(1) <= 0.1 for _ in range(50))


def test_consume_command_prints_decoded_records(default_routing: None, kafka_reader: Any) -> None:
    create_topic("test.protobuf")
    route_activities("consume-test", "test.protobuf", fmt="protobuf")
    event = valid(factories.activity(activity_type="consume-test"))
    reader = kafka_reader("test.protobuf")
    publish_batch(events=[event], source="consume")
    assert reader.read(expected=1)
    env = os.environ | {"DATABASE_URL": "postgres://unused:unused@127.0.0.1:1/unused"}
    out = subprocess.run(
        [sys.executable, "manage.py", "consume", "test.protobuf", "--from-beginning", "--timeout", "3"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = [orjson.loads(line) for line in out.stdout.splitlines()]
    mine = [line for line in lines if line["headers"].get("event_id") == event["event_id"]]
    assert len(mine) == 1
    assert mine[0]["value"] == event
    assert mine[0]["key"] == event["user_id"]
