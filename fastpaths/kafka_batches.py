"""Fast path `kafka_batches`: records appended straight into kafka-python's record accumulator, and encoded
(Kafka record format v2) by us.

Replaces: `KafkaProducer.send()` per record (publisher.kafka_gateway.BatchSender falls back to exactly that).
Why: per record, `send()` re-checks what the publisher knows already, takes the partition's lock, and makes a
future that the sender thread resolves again per record, for an outcome that is the batch's anyway (the broker
answers per batch). Here a partition's lock is taken once per round, records go straight into the batch
builder, and the deliveries share their batch's future (`BatchAck`). And kafka-python's
`DefaultRecordBatchBuilder.append` writes every varint byte by byte through a callback and encodes every header
name again per record (a noticeable share of a record's worker CPU): here varints come from a table and a
record's headers arrive encoded (`HeaderBlocks`, built by the publisher from parts shared by a whole task).

Non-public parts used (kafka-python 3.0): `KafkaProducer._accumulator` (`_tp_lock`, `_batches`, `_incomplete`,
`_appends_in_progress`, `_closed`), `_metadata`, `_sender`, `_transaction_manager`, `_closed`;
`MemoryRecordsBuilder._builder/_closed/_next_offset` and `DefaultRecordBatchBuilder._buffer/_first_timestamp/
_max_timestamp/_num_records/_last_offset/_batch_size`; `ProducerBatch.produce_future` and the
`(offset, timestamp, record_errors)` shape of its value. The record encoder is also checked once per process
against the client's own builder, byte for byte; if they differ the client's builder is used.

Also here: `has_fatal_error(producer)`, whether the idempotent producer hit an error it cannot continue after
(kafka-python has no public accessor). Off, a producer in a fatal state is replaced only once a whole round gets
no acknowledgement, instead of right after the round that broke it.

With KAFKA_TRANSACTIONS on it stands aside (`enabled()` is False, `standing_aside()` says why): a transaction
must learn of every partition a record goes to (`send()` registers it), and the public path does that already.

Upstream change that would let this go: a batch `send_many()` in kafka-python (or a record builder fast enough
per record, e.g. compiled varints), plus a public `KafkaProducer` "fatal error" accessor.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kafka.errors import IllegalStateError as KafkaIllegalStateError
from kafka.errors import KafkaTimeoutError
from kafka.producer.producer_batch import ProducerBatch
from kafka.record.memory_records import MemoryRecordsBuilder
from kafka.structs import TopicPartition

import fastpaths

NAME = "kafka_batches"
VERIFIED = {"kafka-python": "3.0.12"}

logger = logging.getLogger(__name__)


def enabled() -> bool:
    return fastpaths.gate(NAME, VERIFIED) and standing_aside() is None


def standing_aside() -> str | None:
    """Why this fast path is off although switched on and verified, or None."""
    from django.conf import settings

    if settings.configured and getattr(settings, "KAFKA_TRANSACTIONS", False):
        return "KAFKA_TRANSACTIONS=true: records go through send(), which adds their partitions to the transaction"
    return None


class Outgoing(Protocol):
    """A record the publisher built: bytes key and value, (str, bytes) headers, and optionally those headers
    already encoded (`HeaderBlocks`), None when it has not."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    header_block: bytes | None


@dataclass
class PlainRecord:
    """An `Outgoing` record as plain data: the encoder's self-check builds these, and so can callers and tests."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    header_block: bytes | None = None


@dataclass(slots=True)  # not frozen: made per record, and a frozen dataclass costs more to make
class BatchAck:
    """Where one record went: its place in a batch the client sends as a whole. kafka-python completes a batch's
    future once, with the broker's answer for the batch and, if the broker refused single records, a function from
    a record's index to its error."""

    future: Any  # kafka.producer.future.FutureProduceResult
    index: int


def ack_error(ack: BatchAck, deadline: float, settled: dict[int, tuple[BaseException | None, Any]]) -> Any:
    """A BatchAck's error (None once acknowledged), waiting until `deadline` (time.monotonic()) at most. `settled`
    remembers each batch future's outcome across the records of one wait, so a batch is looked at once."""
    future = ack.future
    outcome = settled.get(id(future))
    if outcome is None:
        outcome = settled[id(future)] = _batch_outcome(future, deadline)
    error, record_errors = outcome
    return error if record_errors is None else record_errors(ack.index)


def ack_position(ack: BatchAck) -> tuple[int, int] | None:
    """Where an acknowledged record landed: (partition, offset) — its batch's base offset plus its place in the
    batch, as kafka-python's own FutureRecordMetadata computes it. None if not (or not yet) acknowledged."""
    future = ack.future
    if not future.succeeded():
        return None
    base = future.value[0]
    if base is None or base < 0:
        return None
    return int(future.topic_partition.partition), int(base) + ack.index


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


def has_fatal_error(producer: Any) -> bool:
    """Whether the idempotent producer is in kafka-python's fatal state (False when the fast path is off)."""
    if producer is None or not enabled():
        return False
    manager = getattr(producer, "_transaction_manager", None)
    return bool(manager is not None and manager.has_fatal_error())


# --- Appending many records under one hold of a partition's lock -------------------------------------------------


class BulkAppender:
    """Appends records to the producer's accumulator itself. `append(records, sizes)` returns the deliveries of
    the records it took (position -> BatchAck or the exception the client raised) and the positions `send()` must
    take: records without a key, of a topic whose partitions are unknown yet (send() waits for the metadata), near
    `max_request_size` (send() refuses them with its own error), and every record of a topic whose
    `max.message.bytes` is unknown or not above the client's batch size. The last rule matters: a batch the broker
    calls too large is split by the client into new batches with new futures, so waiting on the old batch's future
    would time out and resend records Kafka already has. A batch never exceeds the client's batch size unless it
    holds a single record, and a single record is never split."""

    # Record batch header (61 bytes) and request framing, generously.
    _BATCH_OVERHEAD = 1024

    def __init__(self, parts: _Parts, *, topic_limits: Mapping[str, int], max_request_size: int, batch_size: int):
        self._parts = parts
        self._max_size = max_request_size
        batch_bytes = batch_size + self._BATCH_OVERHEAD
        self._batchable = {topic for topic, limit in topic_limits.items() if limit > batch_bytes}

    def append(
        self, records: Sequence[Outgoing], sizes: Sequence[int]
    ) -> tuple[dict[int, BatchAck | BaseException], list[int]]:
        parts = self._parts
        partitioner = parts.partitioner
        key_hash: Callable[[bytes], int] | None = getattr(partitioner, "key_hash", None)
        by_partition: dict[TopicPartition, list[int]] = {}
        fallback: list[int] = []
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
            if key_hash is not None:  # publisher.kafka_gateway.KeyHashCachingPartitioner: the same choice, cached
                tp = partitions[key_hash(record.key) % len(partitions)]
            else:
                number = partitioner.partition(
                    topic, record.key, record.key, record.value, record.value, parts.metadata
                )
                tp = TopicPartition(topic, number)
            by_partition.setdefault(tp, []).append(position)
        deliveries: dict[int, BatchAck | BaseException] = {}
        for tp, positions in by_partition.items():
            try:
                _append(parts, tp, records, positions, deliveries)
            except Exception as exc:  # the producer closed under us, or a record it cannot take: theirs to report
                for position in positions:
                    deliveries.setdefault(position, exc)
        return deliveries, fallback


def bulk_appender(producer: Any, *, topic_limits: Mapping[str, int]) -> BulkAppender | None:
    """A BulkAppender for this producer, or None when send() must take every record: the fast path is off, or the
    producer lacks the parts (another kafka-python version), is closed, transactional or has serializers."""
    if not enabled():
        return None
    parts = _fast_path_parts(producer)
    if parts is None:
        return None
    config = producer.config
    return BulkAppender(
        parts,
        topic_limits=topic_limits,
        max_request_size=int(config["max_request_size"]),
        batch_size=int(config["batch_size"]),
    )


def _append(
    parts: _Parts,
    tp: TopicPartition,
    records: Sequence[Outgoing],
    positions: list[int],
    deliveries: dict[int, BatchAck | BaseException],
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


@dataclass(frozen=True)
class _Parts:
    metadata: Any
    accumulator: Any
    sender: Any
    partitioner: Any
    encodes_records: bool  # our record encoder writes what the client's would (checked once per process)


def _fast_path_parts(producer: Any) -> _Parts | None:
    """The producer's internals the BulkAppender needs (kafka-python 3.0's names, checked rather than assumed), or
    None when send() must be used."""
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
    return _Parts(metadata, accumulator, sender, config["partitioner"], encoder_matches_client())


# --- Record encoding (Kafka's record format v2) -------------------------------------------------------------------

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


class HeaderBlocks:
    """The publisher's way to hand records over with their headers already encoded, without knowing the format:
    a record's header block is `count(n)` + the `encode(...)` of each of its n headers, in order; `encoder(name)`
    makes a header of that name cheaper per record. The BulkAppender copies blocks into its batches as they are;
    `send()` ignores them (it takes the headers list)."""

    count = staticmethod(varint)
    encode = staticmethod(encode_header)

    @staticmethod
    def encoder(name: str) -> Callable[[bytes], bytes]:
        prefix = encode_header(name, b"")[:-1]  # the name part (the empty value's length, 0, dropped)

        def encode(value: bytes) -> bytes:
            return b"".join((prefix, varint(len(value)), value))

        return encode


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


def encoder_matches_client() -> bool:
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
