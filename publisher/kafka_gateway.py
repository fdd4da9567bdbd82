"""The one place that talks to Kafka: a lazy, per-process producer, the admin client, and topic constants.

Everything else goes through here so producer settings, security and shutdown live in one module.
Delivery futures are returned to callers, who wait on them: a failed send must reach retry and the DLQ,
never vanish in a callback.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from django.conf import settings
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import IllegalStateError as KafkaIllegalStateError
from kafka.errors import KafkaTimeoutError, TopicAlreadyExistsError
from kafka.partitioner.default import DefaultPartitioner, murmur2
from kafka.producer.producer_batch import ProducerBatch
from kafka.record.memory_records import MemoryRecordsBuilder
from kafka.structs import TopicPartition

from publisher.errors import is_retryable

logger = logging.getLogger(__name__)

TOPIC_DLQ = "dlq.events"

_producer: KafkaProducer | None = None
_producer_pid: int | None = None
_lock = threading.Lock()


def configured_topics() -> list[str]:
    """The event topics named by the environment, plus the dead-letter topic."""
    names = [
        settings.KAFKA_TOPIC_ATTEMPTS,
        settings.KAFKA_TOPIC_SESSIONS,
        settings.KAFKA_TOPIC_PLACEMENTS,
        settings.KAFKA_TOPIC_ACTIVITIES,
        settings.KAFKA_TOPIC_ML_TRAINING,
        TOPIC_DLQ,
    ]
    return list(dict.fromkeys(names))


def connection_config() -> dict[str, Any]:
    """Bootstrap and security options shared by producer, consumer and admin clients."""
    config: dict[str, Any] = {
        "bootstrap_servers": settings.KAFKA_BROKERS,
        "security_protocol": settings.KAFKA_SECURITY_PROTOCOL,
        "client_id": "event-ingestion",
    }
    if settings.KAFKA_SECURITY_PROTOCOL.startswith("SASL"):
        config["sasl_mechanism"] = settings.KAFKA_SASL_MECHANISM
        config["sasl_plain_username"] = settings.KAFKA_SASL_USERNAME
        config["sasl_plain_password"] = settings.KAFKA_SASL_PASSWORD
    if settings.KAFKA_SECURITY_PROTOCOL.endswith("SSL"):
        config["ssl_cafile"] = settings.KAFKA_SSL_CAFILE or None
        config["ssl_certfile"] = settings.KAFKA_SSL_CERTFILE or None
        config["ssl_keyfile"] = settings.KAFKA_SSL_KEYFILE or None
    return config


class KeyHashCachingPartitioner(DefaultPartitioner):
    """The client's default partitioner (murmur2 of the key, as Java's, so a user's events share a partition with
    other producers'), remembering each key's hash: kafka-python hashes in pure Python on every send, and a
    learner's events keep coming with the same key. Records without a key go to the default's choice."""

    _MAX_KEYS = 100_000  # ~10 MB at most; then start over

    def __init__(self) -> None:
        self._hashes: dict[bytes, int] = {}

    def partition(
        self, topic: str, key: Any, serialized_key: bytes | None, value: Any, serialized_value: Any, cluster: Any
    ) -> int:
        if serialized_key is None or not (partitions := cluster.partitions_for_topic(topic)):
            # No key, or a topic without metadata yet: the default decides (and reports).
            return int(super().partition(topic, key, serialized_key, value, serialized_value, cluster))
        hashed = self.key_hash(serialized_key)
        ordered = sorted(partitions)
        return int(ordered[hashed % len(ordered)])

    def key_hash(self, key: bytes) -> int:
        """murmur2 of the key as a positive int: a key goes to the partition at this index, modulo their count,
        of the topic's partitions in ascending order."""
        hashed = self._hashes.get(key)
        if hashed is None:
            if len(self._hashes) >= self._MAX_KEYS:
                self._hashes.clear()
            hashed = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return hashed


@dataclass(slots=True)  # not frozen: made per record, and a frozen dataclass costs twice as much to make
class BatchAck:
    """Where one record went: its place in a batch the client sends as a whole. kafka-python completes a batch's
    future once, with the broker's answer for the batch and, if the broker refused single records, a function from
    a record's index to its error."""

    future: Any  # kafka.producer.future.FutureProduceResult
    index: int


Delivery = Any  # a BatchAck, or the FutureRecordMetadata kafka-python's send() returns


def delivery_errors(deliveries: Sequence[Delivery], *, timeout: float) -> list[BaseException | None]:
    """Wait for deliveries, all within `timeout` seconds from now; for each, None once Kafka acknowledged it, else
    its error. Records sharing a batch are settled by one look at the batch's future."""
    deadline = time.monotonic() + timeout
    settled: dict[int, tuple[BaseException | None, Any]] = {}  # id(batch future) -> (error, per-record errors)
    errors: list[BaseException | None] = []
    for delivery in deliveries:
        if type(delivery) is BatchAck:
            future = delivery.future
            outcome = settled.get(id(future))
            if outcome is None:
                outcome = settled[id(future)] = _batch_outcome(future, deadline)
            error, record_errors = outcome
            errors.append(error if record_errors is None else record_errors(delivery.index))
        else:
            errors.append(delivery_error(delivery, timeout=max(0.1, deadline - time.monotonic())))
    return errors


def _batch_outcome(future: Any, deadline: float) -> tuple[BaseException | None, Any]:
    try:
        if not future.is_done:
            timeout = max(0.1, deadline - time.monotonic())
            if not future.wait(timeout):
                return KafkaTimeoutError(f"no acknowledgement within {timeout:.1f} s"), None
        if future.failed():
            return future.exception, None
        return None, future.value[2]
    except Exception as exc:
        return exc, None


def delivery_error(delivery: Delivery, *, timeout: float) -> BaseException | None:
    """Wait up to `timeout` seconds for one delivery; None once Kafka acknowledged it, else its error."""
    if type(delivery) is BatchAck:
        return delivery_errors([delivery], timeout=timeout)[0]
    try:
        if not delivery.is_done:  # after flush() nearly all are done: no get() and its timer per record
            delivery.get(timeout=timeout)
        elif delivery.failed():
            return delivery.exception
    except Exception as exc:
        return exc
    return None


class Outgoing(Protocol):
    """A record the publisher built: bytes key and value, (str, bytes) headers, and optionally those headers
    already encoded (`encode_headers(headers)`, when the caller has them cheaper)."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    header_block: bytes | None


class BatchSender:
    """Appends many records to kafka-python's record accumulator at once, for records the publisher built itself
    (`Outgoing`). Returns one delivery per record, in order:
    a `BatchAck`, the future of `send()`, or the exception `send()` raised.

    Why: per record, `send()` re-checks what is known here, takes the partition's lock, and makes a future that
    the sender thread resolves again per record, for an outcome that is the batch's anyway (the broker answers per
    batch). Here the partition's lock is taken once per round, records go straight into the batch builder, and
    the deliveries share their batch's future. Past that it does what `send()` does for a keyed record to an
    idempotent, non-transactional producer: partition with the configured partitioner, append, wake the sender.

    `send()` itself takes: a producer without those parts (another kafka-python version) or a transactional one;
    a record without a key; a topic whose partitions are not known yet (send() waits for the metadata); a record
    near `max_request_size` (send() refuses it with its own error); and every record of a topic whose
    `max.message.bytes` is unknown or not above the client's batch size. The last rule matters: a batch the broker
    calls too large is split by the client into new batches with new futures, so waiting on the old batch's future
    would time out and resend records Kafka already has. A batch never exceeds the client's batch size unless it
    holds a single record, and a single record is never split. After a retryable refusal by `send()` (no metadata,
    buffer full) the round's later fallback records get the same error instead of waiting again each.
    Made once per round of sends."""

    # Record batch header (61 bytes) and request framing, generously.
    _BATCH_OVERHEAD = 1024

    def __init__(self, producer: KafkaProducer, *, topic_limits: Mapping[str, int]) -> None:
        self._producer = producer
        self._parts = _fast_path_parts(producer)
        self._max_size = int(producer.config["max_request_size"])
        batch_bytes = int(producer.config["batch_size"]) + self._BATCH_OVERHEAD
        self._batchable = {topic for topic, limit in topic_limits.items() if limit > batch_bytes}

    def send_many(self, records: Sequence[Outgoing], *, sizes: Sequence[int]) -> list[Delivery | BaseException]:
        """`sizes`: each record's size, estimated generously (framing included, compression not counted)."""
        deliveries: list[Delivery | BaseException | None] = [None] * len(records)
        parts = self._parts
        by_partition: dict[TopicPartition, list[int]] = {}
        fallback: list[int] = []
        if parts is None:
            fallback = list(range(len(records)))
        else:
            partitioner = parts.partitioner
            # Per topic: its partitions in the partitioner's order, or None where send() must take its records.
            known: dict[str, tuple[TopicPartition, ...] | None] = {}
            for position, record in enumerate(records):
                topic = record.topic
                if topic in known:
                    partitions = known[topic]
                else:
                    numbers = parts.metadata.partitions_for_topic(topic) if topic in self._batchable else None
                    partitions = known[topic] = (
                        tuple(TopicPartition(topic, n) for n in sorted(numbers)) if numbers else None
                    )
                if partitions is None or not record.key or sizes[position] >= self._max_size:
                    fallback.append(position)
                    continue
                if isinstance(partitioner, KeyHashCachingPartitioner):
                    tp = partitions[partitioner.key_hash(record.key) % len(partitions)]
                else:
                    number = partitioner.partition(
                        topic, record.key, record.key, record.value, record.value, parts.metadata
                    )
                    tp = TopicPartition(topic, number)
                by_partition.setdefault(tp, []).append(position)
        for tp, positions in by_partition.items():
            try:
                self._append(parts, tp, records, positions, deliveries)  # type: ignore[arg-type]
            except Exception as exc:  # the producer closed under us, or a record it cannot take: theirs to report
                for position in positions:
                    if deliveries[position] is None:
                        deliveries[position] = exc
        blocked: BaseException | None = None
        for position in fallback:
            record = records[position]
            if blocked is not None:
                deliveries[position] = blocked
                continue
            try:
                deliveries[position] = self._producer.send(
                    record.topic, key=record.key, value=record.value, headers=record.headers
                )
            except Exception as exc:
                deliveries[position] = exc
                if is_retryable(exc):
                    blocked = exc
        return deliveries

    @staticmethod
    def _append(
        parts: _FastPathParts,
        tp: TopicPartition,
        records: Sequence[Outgoing],
        positions: list[int],
        deliveries: list[Delivery | BaseException | None],
    ) -> None:
        """What RecordAccumulator.append does, for many records of one partition under one hold of its lock."""
        accumulator = parts.accumulator
        config = accumulator.config
        now = time.monotonic()
        timestamp_ms = int(time.time() * 1000)
        wake = False
        accumulator._appends_in_progress.increment()
        try:
            with accumulator._tp_lock(tp):
                if accumulator._closed:
                    raise KafkaIllegalStateError("RecordAccumulator is closed")
                queue = accumulator._batches[tp]
                batch: Any = queue[-1] if queue else None
                builder: Any = batch.records if batch is not None else None
                append = _append_encoded if parts.encodes_records else _append_with_client
                for position in positions:
                    record = records[position]
                    appended = append(builder, timestamp_ms, record) if builder is not None else None
                    if appended is None:
                        # No batch yet, or the last one is full or already drained: start a new one.
                        if batch is not None:
                            batch.last_append = now
                        builder = MemoryRecordsBuilder(
                            config["message_version"], config["compression_attrs"], config["batch_size"]
                        )
                        batch = ProducerBatch(tp, builder, now=now)
                        appended = append(builder, timestamp_ms, record)
                        if appended is None:  # a new batch takes any one record
                            raise KafkaIllegalStateError("a new record batch refused its first record")
                        queue.append(batch)
                        accumulator._incomplete.add(batch)
                        wake = True
                    deliveries[position] = BatchAck(batch.produce_future, appended)
                if batch is not None:
                    batch.last_append = now
                    wake = wake or len(queue) > 1 or builder.is_full()
        finally:
            accumulator._appends_in_progress.decrement()
        if wake:
            parts.sender.wakeup()


# Record encoding (Kafka's record format v2): kafka-python's DefaultRecordBatchBuilder.append writes every
# varint byte by byte through a callback and encodes every header name again per record — ~5 µs of a record's
# ~33 µs of worker CPU. Here varints come from a table and a record's headers arrive encoded (the publisher
# builds them from parts shared by a whole task); the batch builder's bookkeeping is the client's own.

_VARINT_TABLE_SIZE = 1 << 14


def _varint_bytes(value: int) -> bytes:
    """Zigzag varint, as Kafka's record format v2 writes signed integers."""
    value = (value << 1) ^ (value >> 63)
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


_VARINTS = [_varint_bytes(n) for n in range(_VARINT_TABLE_SIZE)]


def varint(value: int) -> bytes:
    return _VARINTS[value] if 0 <= value < _VARINT_TABLE_SIZE else _varint_bytes(value)


def encode_header(name: str, value: bytes) -> bytes:
    """One header as a record carries it; `encode_headers` of a list is its parts joined behind their count."""
    encoded_name = name.encode()
    return b"".join((varint(len(encoded_name)), encoded_name, varint(len(value)), value))


def encode_headers(headers: Sequence[tuple[str, bytes]]) -> bytes:
    return varint(len(headers)) + b"".join(encode_header(name, value) for name, value in headers)


def _append_encoded(builder: Any, timestamp_ms: int, record: Outgoing) -> int | None:
    """`MemoryRecordsBuilder.append` for one record: its offset in the batch, or None when the batch is closed
    or has no room. Mirrors `DefaultRecordBatchBuilder.append` (kafka-python 3.0), the bookkeeping included."""
    if builder._closed:
        return None
    batch = builder._builder
    offset = builder._next_offset
    key, value = record.key, record.value
    header_block = record.header_block
    if header_block is None:
        header_block = encode_headers(record.headers)
    first = batch._first_timestamp is None
    if first:
        batch._first_timestamp = batch._max_timestamp = timestamp_ms
        delta = 0
    else:
        delta = timestamp_ms - batch._first_timestamp
    body = b"".join(
        (b"\x00", varint(delta), varint(offset), varint(len(key)), key, varint(len(value)), value, header_block)
    )
    length = varint(len(body))
    buffer = batch._buffer
    if not first and len(length) + len(body) + len(buffer) > batch._batch_size:
        return None
    if batch._max_timestamp < timestamp_ms:
        batch._max_timestamp = timestamp_ms
    batch._num_records += 1
    batch._last_offset = offset
    buffer += length
    buffer += body
    builder._next_offset = offset + 1
    return offset


def _append_with_client(builder: Any, timestamp_ms: int, record: Outgoing) -> int | None:
    appended = builder.append(timestamp_ms, record.key, record.value, record.headers)
    return None if appended is None else int(appended.offset)


_encoder_check: bool | None = None


def _encoder_matches_client() -> bool:
    """Whether `_append_encoded` builds byte for byte the batch kafka-python's own builder does (checked once
    per process, on records that exercise every varint width, a negative timestamp delta and a full batch).
    If not — another kafka-python release — the client's builder is used."""
    global _encoder_check
    if _encoder_check is None:
        try:
            _encoder_check = _sample_batch(_append_encoded) == _sample_batch(_append_with_client)
        except Exception:
            _encoder_check = False
        if not _encoder_check:
            logger.warning("kafka-python's record format differs from ours; using its own record builder")
    return _encoder_check


@dataclass
class PlainRecord:
    """An `Outgoing` record as plain data: the encoder's self-check builds these, and so can callers and tests."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    header_block: bytes | None = None


def _sample_batch(append: Any) -> tuple[bytes, list[int | None]]:
    builder = MemoryRecordsBuilder(2, 0, 32768)
    builder.set_producer_state(7, 1, 42, False)
    samples = [
        (1_700_000_000_000, b"user-1", b"{}", [("event_type", b"attempt"), ("event_id", b"e" * 200)]),
        (1_700_000_000_000 - 5, b"k" * 130, b"v" * 20_000, []),  # earlier timestamp; 3-byte lengths
        (1_700_000_000_900, b"k", b"x" * 70, [("h" * 70, b"")]),
        *[(1_700_000_000_950, b"user-2", b"y" * 3000, [("source", b"s")])] * 6,  # until the batch is full
    ]
    offsets = [append(builder, ts, PlainRecord("t", key, value, headers)) for ts, key, value, headers in samples]
    builder.close()
    return bytes(builder.buffer()), offsets


@dataclass(frozen=True)
class _FastPathParts:
    metadata: Any
    accumulator: Any
    sender: Any
    partitioner: Any
    encodes_records: bool  # our record encoder writes what the client's would (checked once per process)


def _fast_path_parts(producer: KafkaProducer) -> _FastPathParts | None:
    """The producer's internals `BatchSender` needs (kafka-python 3.0's names, checked rather than assumed), or
    None when it must use `send()`."""
    config = producer.config
    manager = getattr(producer, "_transaction_manager", None)
    if (
        getattr(producer, "_closed", True)
        or config.get("key_serializer") is not None
        or config.get("value_serializer") is not None
        or (manager is not None and manager.is_transactional())
    ):
        return None
    metadata = getattr(producer, "_metadata", None)
    accumulator = getattr(producer, "_accumulator", None)
    sender = getattr(producer, "_sender", None)
    if (
        metadata is None
        or sender is None
        or not all(
            hasattr(accumulator, name) for name in ("_tp_lock", "_batches", "_incomplete", "_appends_in_progress")
        )
        or getattr(accumulator, "config", {}).get("message_version") != 2
    ):
        return None
    return _FastPathParts(metadata, accumulator, sender, config["partitioner"], _encoder_matches_client())


def producer_config(**overrides: Any) -> dict[str, Any]:
    timeout_ms = int(settings.KAFKA_PRODUCER_TIMEOUT * 1000)
    linger_ms = int(settings.KAFKA_PRODUCER_BATCH_TIMEOUT * 1000)
    compression = settings.KAFKA_COMPRESSION_TYPE
    config = connection_config() | {
        "acks": "all",
        "enable_idempotence": True,
        "compression_type": None if compression == "none" else compression,
        "linger_ms": linger_ms,
        # KAFKA_PRODUCER_BATCH_SIZE counts messages (the seed's meaning); kafka-python batches by bytes, so
        # allow ~1 KiB per message, never below the client's 16 KiB default.
        "batch_size": max(16384, settings.KAFKA_PRODUCER_BATCH_SIZE * 1024),
        # The client retries transient errors itself only within this window; our retry policy (publisher
        # tasks) runs on top, so the worst case is bounded by (retries + 1) x KAFKA_PRODUCER_TIMEOUT.
        "delivery_timeout_ms": max(timeout_ms, linger_ms + 1000),
        "request_timeout_ms": max(1000, min(timeout_ms, 30000) - linger_ms),
        "max_block_ms": timeout_ms,
        # kafka-python 3 bootstraps inside KafkaProducer() with its own 30 s default; keep it within the timeout.
        "bootstrap_timeout_ms": timeout_ms,
        "retry_backoff_ms": 100,
        "max_in_flight_requests_per_connection": 5,
        # The client's own sensors (nothing reads them: our Prometheus metrics count deliveries) cost CPU per
        # record and per flush: send+flush+ack of one record 0.64 -> 0.58 ms; bench.task_cost, tasks of 10
        # events: 284-292 -> 269-272 us of worker CPU per record.
        "metrics_enabled": False,
        "partitioner": KeyHashCachingPartitioner(),
    }
    config.update(overrides)
    return config


def get_producer() -> KafkaProducer:
    """This process's producer, created on first use. A forked child gets its own (sockets don't fork)."""
    global _producer, _producer_pid
    pid = os.getpid()
    if _producer is not None and _producer_pid == pid:
        return _producer
    with _lock:
        if _producer is None or _producer_pid != pid:
            _producer = KafkaProducer(**producer_config())
            _producer_pid = pid
            logger.info("kafka producer created", extra={"pid": pid})
    return _producer


def close_producer(timeout: float = 10.0) -> None:
    """Flush what is buffered and close; called on worker shutdown so nothing waits in memory."""
    global _producer, _producer_pid
    with _lock:
        producer, owner = _producer, _producer_pid
        _producer, _producer_pid = None, None
    if producer is not None and owner == os.getpid():
        try:
            producer.flush(timeout=timeout)
        finally:
            producer.close(timeout=timeout)


def producer_is_broken() -> bool:
    """True when the idempotent producer hit an error it cannot continue after (kafka-python moves it to a
    fatal state, e.g. on a record too large for the broker); it must then be replaced."""
    producer = _producer
    manager = getattr(producer, "_transaction_manager", None) if producer is not None else None
    return bool(manager is not None and manager.has_fatal_error())


def reset_producer() -> None:
    """Drop a broken producer without flushing (its buffers were aborted); the next get_producer() makes a new one."""
    global _producer, _producer_pid
    with _lock:
        producer, _producer, _producer_pid = _producer, None, None
    if producer is not None:
        try:
            producer.close(timeout=0)
        except Exception:
            logger.exception("closing a broken producer failed")


_TOPIC_LIMIT_TTL = 60.0
_topic_limits: dict[str, tuple[float, int]] = {}


def max_message_bytes(topics: Iterable[str]) -> dict[str, int]:
    """Each topic's max.message.bytes (cached a minute per process; topics we can't describe are left out).
    Checked before sending because a record the broker refuses as too large breaks kafka-python's
    idempotent producer for every record in flight."""
    now = time.monotonic()
    wanted = set(topics)
    missing = [t for t in wanted if t not in _topic_limits or _topic_limits[t][0] < now]
    if missing:
        try:
            admin = admin_client()
            try:
                described = admin.describe_configs(
                    [ConfigResource(ConfigResourceType.TOPIC, t, {"max.message.bytes": None}) for t in missing],
                    config_filter="all",
                )
            finally:
                admin.close()
            for topic, configs in described.get("topic", {}).items():
                value = configs.get("max.message.bytes", {}).get("value")
                if value is not None:
                    _topic_limits[topic] = (now + _TOPIC_LIMIT_TTL, int(value))
        except Exception:
            logger.warning("could not read max.message.bytes of %s", ",".join(sorted(missing)))
    return {t: _topic_limits[t][1] for t in wanted if t in _topic_limits}


def forget_topic_limits() -> None:
    _topic_limits.clear()


def admin_client(**overrides: Any) -> KafkaAdminClient:
    timeout_ms = int(settings.KAFKA_PRODUCER_TIMEOUT * 1000)
    defaults = {"request_timeout_ms": timeout_ms, "bootstrap_timeout_ms": timeout_ms}
    return KafkaAdminClient(**(connection_config() | defaults | overrides))


def list_topics(**admin_overrides: Any) -> set[str]:
    """The topic names the cluster has (a short-lived admin client; raises if no broker answers)."""
    admin = admin_client(**admin_overrides)
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


@dataclass(frozen=True)
class EnsureTopicsResult:
    created: list[str]
    existing: list[str]


def ensure_topics(*, names: Iterable[str], partitions: int, replication_factor: int) -> EnsureTopicsResult:
    """Create the topics that do not exist yet; leave existing ones (and their settings) alone."""
    wanted = list(dict.fromkeys(names))
    admin = admin_client()
    try:
        present = set(admin.list_topics())
        missing = [name for name in wanted if name not in present]
        created: list[str] = []
        for name in missing:
            try:
                admin.create_topics(
                    {name: {"num_partitions": partitions, "replication_factor": replication_factor}},
                    wait_for_metadata=True,
                )
                created.append(name)
            except TopicAlreadyExistsError:
                pass  # created concurrently by another process: that is what we wanted
        return EnsureTopicsResult(created=created, existing=[name for name in wanted if name in present])
    finally:
        admin.close()
