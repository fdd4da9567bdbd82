"""The publisher's shortcut past kafka-python's `send()` checks, against the real broker: the same records in the
same partitions as `send()` would write, and `send()` itself wherever the shortcut's assumptions do not hold."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.conf import settings
from kafka import KafkaProducer
from kafka.errors import MessageSizeTooLargeError

from publisher import kafka_gateway
from publisher.kafka_gateway import CheckedSender

pytestmark = pytest.mark.django_db


def _headers(n: int) -> list[tuple[str, bytes]]:
    return [("event_type", b"attempt"), ("event_id", f"id-{n}".encode()), ("schema_version", b"1"), ("source", b"t")]


@pytest.fixture
def producer() -> Any:
    made = KafkaProducer(**kafka_gateway.producer_config(client_id="test-send-checked"))
    yield made
    made.close(timeout=5)


def test_records_land_as_send_would_write_them(producer: Any, kafka_reader: Any) -> None:
    topic = settings.KAFKA_TOPIC_ATTEMPTS
    producer.partitions_for(topic)  # metadata known: the shortcut applies
    reader = kafka_reader(topic)
    run = uuid.uuid4().hex[:8]
    keys = [f"user-{run}-{n}".encode() for n in range(60)]
    sender = CheckedSender(producer)
    shortcut = [
        sender.send(topic, key=k, value=b'{"n":%d}' % n, headers=_headers(n), size_estimate=300)
        for n, k in enumerate(keys)
    ]
    reference = [producer.send(topic, key=k, value=b'{"n":%d}' % n, headers=_headers(n)) for n, k in enumerate(keys)]
    producer.flush(10)
    ours = [f.get(10) for f in shortcut]
    theirs = [f.get(10) for f in reference]

    # Each key in the partition send() chose for it, and every record acknowledged with an offset.
    assert [m.partition for m in ours] == [m.partition for m in theirs]
    assert len({m.partition for m in ours}) > 1  # the keys spread: the comparison means something
    assert all(m.topic == topic and m.offset >= 0 for m in ours)

    written = [r for r in reader.read(expected=120) if r.key in set(keys)]
    assert len(written) == 120
    by_offset = {(r.partition, r.offset): r for r in written}
    for n, meta in enumerate(ours):
        record = by_offset[(meta.partition, meta.offset)]
        assert record.key == keys[n]
        assert record.value == b'{"n":%d}' % n
        assert record.headers == dict(_headers(n))


def test_send_is_used_where_the_shortcut_does_not_apply(producer: Any, kafka_reader: Any) -> None:
    # A topic this producer has no metadata for yet: send() waits for it and delivers.
    topic = settings.KAFKA_TOPIC_ACTIVITIES
    assert not producer._metadata.partitions_for_topic(topic)
    reader = kafka_reader(topic)
    key = f"user-{uuid.uuid4().hex[:8]}".encode()
    sender = CheckedSender(producer)
    first = sender.send(topic, key=key, value=b"{}", headers=_headers(0), size_estimate=200)
    # A record without a key: the partitioner's sticky choice is send()'s business.
    keyless = sender.send(topic, key=b"", value=b'{"k":0}', headers=_headers(1), size_estimate=200)
    producer.flush(10)
    assert first.get(10).offset >= 0
    assert keyless.get(10).offset >= 0
    delivered = reader.read(expected=2)
    assert {r.value for r in delivered} >= {b"{}", b'{"k":0}'}

    # A record at the client's request limit gets send()'s own refusal, not a broken batch.
    with pytest.raises(MessageSizeTooLargeError):
        sender.send(
            topic,
            key=key,
            value=b"x" * producer.config["max_request_size"],
            headers=[],
            size_estimate=producer.config["max_request_size"] + 128,
        ).get(10)
