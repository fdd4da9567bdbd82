"""A real Celery worker process publishes to a real Kafka topic; a consumer reads the record back intact."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from events.schema import validate_event
from publisher.services import enqueue_events
from tests import factories
from tests.conftest import WorkerProcess

pytestmark = pytest.mark.django_db(transaction=True)


def test_worker_publishes_task_to_kafka_with_key_value_and_headers(
    default_routing: None, celery_worker: WorkerProcess, kafka_reader: Any
) -> None:
    checked = validate_event(factories.attempt(quality=2, user_id="learner-7"))
    assert not isinstance(checked, list)
    event = checked.data
    reader = kafka_reader("user.attempts", "ml.training_events")
    accepted_at = time.time()

    enqueue_events(events=[event], source="wiring-test", accepted_at=accepted_at)

    records = reader.read(expected=1)
    assert [r.topic for r in records] == ["user.attempts"]  # quality 2: not for ML training
    record = records[0]
    assert record.key == b"learner-7"
    assert orjson.loads(record.value) == event
    assert record.value == orjson.dumps(event)  # compact UTF-8
    assert record.headers["event_type"] == b"attempt"
    assert record.headers["event_id"] == str(event["event_id"]).encode()
    assert record.headers["schema_version"] == b"1"
    assert record.headers["content-type"] == b"application/json"
    assert record.headers["schema"] == b"ingestion.v1.AttemptEvent"
    assert record.headers["source"] == b"wiring-test"
    assert record.headers["ingested_at"].endswith(b"Z")
