"""The publisher's bulk path into kafka-python's record accumulator, against the real broker: the same records in
the same partitions as `send()` writes them, every delivery answered, a batch the broker refuses reported on each of
its records, and `send()` itself wherever the bulk path's assumptions do not hold."""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import IllegalStateError as KafkaIllegalStateError
from kafka.errors import MessageSizeTooLargeError

import fastpaths
from fastpaths import kafka_batches
from fastpaths.kafka_batches import BatchAck, PlainRecord, encode_headers
from publisher import kafka_gateway
from publisher.kafka_gateway import BatchSender, delivery_error
from tests.fastpath_switch import on_off

pytestmark = pytest.mark.django_db

NO_LIMIT = 10 * 1024 * 1024


def _headers(n: int) -> list[tuple[str, bytes]]:
    return [("event_type", b"attempt"), ("event_id", f"id-{n}".encode()), ("schema_version", b"1"), ("source", b"t")]


@pytest.fixture
def producer() -> Any:
    made = KafkaProducer(**kafka_gateway.producer_config(client_id="test-batch-sender"))
    yield made
    made.close(timeout=5)


def _send(sender: BatchSender, records: list[PlainRecord]) -> list[Any]:
    return sender.send_many(records, sizes=[300] * len(records))


@on_off("kafka_batches")
def test_records_land_as_send_would_write_them(producer: Any, kafka_reader: Any, fast_path_on: bool) -> None:
    topic = settings.KAFKA_TOPIC_ATTEMPTS
    producer.partitions_for(topic)  # metadata known: the bulk path applies
    reader = kafka_reader(topic)
    run = uuid.uuid4().hex[:8]
    keys = [f"user-{run}-{n % 20}".encode() for n in range(120)]  # several records per key: order matters
    records = [
        # Half with their headers encoded by the caller, half left to the sender.
        PlainRecord(topic, k, b'{"n":%d}' % n, _headers(n), encode_headers(_headers(n)) if n % 2 else None)
        for n, k in enumerate(keys)
    ]
    deliveries = _send(BatchSender(producer, topic_limits={topic: NO_LIMIT}), records)
    reference = [producer.send(topic, key=k, value=b'{"r":%d}' % n, headers=_headers(n)) for n, k in enumerate(keys)]
    producer.flush(10)

    if fast_path_on:
        assert all(isinstance(d, BatchAck) for d in deliveries)  # the bulk path was taken, not send()
    else:
        assert not any(isinstance(d, BatchAck) for d in deliveries)  # the public path: send() per record
    assert [delivery_error(d, timeout=10) for d in deliveries] == [None] * 120
    theirs = [f.get(10) for f in reference]
    written = [r for r in reader.read(expected=240) if r.key in set(keys)]
    assert len(written) == 240
    ours = [r for r in written if r.value.startswith(b'{"n"')]
    by_value = {r.value: r for r in ours}
    assert len(by_value) == 120
    for n, key in enumerate(keys):
        record = by_value[b'{"n":%d}' % n]
        assert record.key == key
        assert record.partition == theirs[n].partition  # the partition send() chose for that key
        assert record.headers == dict(_headers(n))
    assert len({r.partition for r in ours}) > 1  # the keys spread: the comparison means something
    # Within a partition, records keep the order they were given in.
    for partition in {r.partition for r in ours}:
        in_partition = sorted((r for r in ours if r.partition == partition), key=lambda r: r.offset)
        sent_order = [int(r.value[5:-1]) for r in in_partition]
        assert sent_order == sorted(sent_order)


@pytest.mark.fastpath("kafka_batches")
def test_many_records_fill_several_batches(kafka_reader: Any) -> None:
    topic = settings.KAFKA_TOPIC_ATTEMPTS
    producer = KafkaProducer(**kafka_gateway.producer_config(client_id="test-batch-sender", batch_size=16384))
    try:
        producer.partitions_for(topic)
        reader = kafka_reader(topic)
        key = f"user-{uuid.uuid4().hex[:8]}".encode()
        records = [PlainRecord(topic, key, b"%05d" % n + b"x" * 995, _headers(n)) for n in range(200)]  # ~200 kB
        deliveries = _send(BatchSender(producer, topic_limits={topic: NO_LIMIT}), records)
        producer.flush(10)
        batches = {id(d.future) for d in deliveries}
        assert len(batches) >= 12  # one key, one partition: ~16 records per 16 KiB batch
        assert [delivery_error(d, timeout=10) for d in deliveries] == [None] * 200
        written = sorted((r for r in reader.read(expected=200) if r.key == key), key=lambda r: r.offset)
        assert [r.value[:5] for r in written] == [b"%05d" % n for n in range(200)]
    finally:
        producer.close(timeout=5)


@on_off("kafka_batches")
def test_a_refused_batch_is_reported_on_each_of_its_records(fast_path_on: bool) -> None:
    # A topic whose limit is below the record: told (wrongly) that the limit is high, the sender batches it, and
    # the broker's refusal must reach the caller as that record's error rather than vanish.
    topic = f"test-small-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(**kafka_gateway.connection_config())
    admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": "2000"})], validate_only=False)
    producer = KafkaProducer(**kafka_gateway.producer_config(client_id="test-batch-sender"))
    try:
        producer.partitions_for(topic)
        deliveries = _send(
            BatchSender(producer, topic_limits={topic: NO_LIMIT}),
            [PlainRecord(topic, b"user-1", os.urandom(5000), _headers(1))],  # incompressible
        )
        producer.flush(10)  # does not raise: each delivery must say what happened
        assert isinstance(delivery_error(deliveries[0], timeout=10), MessageSizeTooLargeError)
    finally:
        producer.close(timeout=0)
        admin.delete_topics([topic])
        admin.close()


@on_off("kafka_batches")
def test_send_is_used_where_the_bulk_path_does_not_apply(producer: Any, kafka_reader: Any, fast_path_on: bool) -> None:
    topic = settings.KAFKA_TOPIC_ACTIVITIES
    assert not producer._metadata.partitions_for_topic(topic)
    reader = kafka_reader(topic)
    key = f"user-{uuid.uuid4().hex[:8]}".encode()
    sender = BatchSender(producer, topic_limits={topic: NO_LIMIT})
    deliveries = sender.send_many(
        [
            PlainRecord(topic, key, b"{}", _headers(0)),  # no metadata for the topic yet: send() waits for it
            PlainRecord(topic, b"", b'{"k":0}', _headers(1)),  # no key: the partitioner's sticky choice is send()'s
            PlainRecord(topic, key, b"x" * producer.config["max_request_size"], []),  # send() refuses it itself
        ],
        sizes=[200, 200, producer.config["max_request_size"] + 128],
    )
    producer.flush(10)
    assert not any(isinstance(d, BatchAck) for d in deliveries)
    assert delivery_error(deliveries[0], timeout=10) is None
    assert delivery_error(deliveries[1], timeout=10) is None
    assert isinstance(deliveries[2], MessageSizeTooLargeError)  # returned, not raised: the others still went
    assert {r.value for r in reader.read(expected=2)} >= {b"{}", b'{"k":0}'}

    # A topic whose max.message.bytes is unknown, or not above the batch size: a batch the broker called too
    # large would be split into new futures, so those records take send().
    producer.partitions_for(settings.KAFKA_TOPIC_ATTEMPTS)
    for limits in ({}, {settings.KAFKA_TOPIC_ATTEMPTS: producer.config["batch_size"]}):
        [delivery] = _send(
            BatchSender(producer, topic_limits=limits), [PlainRecord(settings.KAFKA_TOPIC_ATTEMPTS, key, b"{}", [])]
        )
        assert not isinstance(delivery, BatchAck)
        assert delivery_error(delivery, timeout=10) is None


@pytest.mark.fastpath("kafka_batches")
def test_the_clients_own_builder_is_used_if_our_encoding_ever_differs(
    producer: Any, kafka_reader: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def wrong(builder: Any, timestamp_ms: int, record: Any) -> int | None:
        return kafka_batches._append_with_client(builder, timestamp_ms + 1, record)

    monkeypatch.setattr(kafka_batches, "_append_encoded", wrong)
    monkeypatch.setattr(kafka_batches, "_encoder_check", None)
    assert kafka_batches.encoder_matches_client() is False
    topic = settings.KAFKA_TOPIC_ATTEMPTS
    producer.partitions_for(topic)
    reader = kafka_reader(topic)
    key = f"user-{uuid.uuid4().hex[:8]}".encode()
    deliveries = _send(
        BatchSender(producer, topic_limits={topic: NO_LIMIT}), [PlainRecord(topic, key, b"{}", _headers(3))]
    )
    producer.flush(10)
    assert isinstance(deliveries[0], BatchAck)
    assert delivery_error(deliveries[0], timeout=10) is None
    [record] = [r for r in reader.read(expected=1) if r.key == key]
    assert record.headers == dict(_headers(3))


@on_off("kafka_batches")
def test_a_producer_closed_under_the_sender_fails_its_records_instead_of_the_round(fast_path_on: bool) -> None:
    topic = settings.KAFKA_TOPIC_ATTEMPTS
    producer = KafkaProducer(**kafka_gateway.producer_config(client_id="test-batch-sender"))
    producer.partitions_for(topic)
    sender = BatchSender(producer, topic_limits={topic: NO_LIMIT})  # made while the producer was open
    producer.close(timeout=5)
    records = [PlainRecord(topic, f"user-{n}".encode(), b"{}", _headers(n)) for n in range(5)]
    deliveries = _send(sender, records)  # does not raise
    assert len(deliveries) == 5
    assert all(isinstance(d, KafkaIllegalStateError) for d in deliveries)


@pytest.mark.fastpath("kafka_batches")
def test_the_bulk_path_stands_aside_for_kafka_transactions(producer: Any) -> None:
    """A transaction must register every partition a record goes to, which send() does: with KAFKA_TRANSACTIONS on
    every record takes send(), and the worker's startup line says why the fast path is off."""
    topic = settings.KAFKA_TOPIC_ATTEMPTS
    producer.partitions_for(topic)
    record = PlainRecord(topic, b"user-1", b"{}", _headers(0))
    assert isinstance(_send(BatchSender(producer, topic_limits={topic: NO_LIMIT}), [record])[0], BatchAck)
    with override_settings(KAFKA_TRANSACTIONS=True):
        assert not kafka_batches.enabled()
        [delivery] = _send(BatchSender(producer, topic_limits={topic: NO_LIMIT}), [record])
        assert not isinstance(delivery, BatchAck)
        assert delivery_error(delivery, timeout=10) is None
        active, why = fastpaths.status()["kafka_batches"]
        assert not active and "KAFKA_TRANSACTIONS" in why
