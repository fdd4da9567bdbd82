"""The one place that talks to Kafka: a lazy, per-process producer, the admin client, and topic constants.

Everything else goes through here so producer settings, security and shutdown live in one module.
Delivery futures are returned to callers, who wait on them: a failed send must reach retry and the DLQ,
never vanish in a callback.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import KafkaTimeoutError, TopicAlreadyExistsError
from kafka.partitioner.default import DefaultPartitioner, murmur2

from fastpaths import kafka_batches
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


Delivery = Any  # a kafka_batches.BatchAck, or the FutureRecordMetadata kafka-python's send() returns


def delivery_errors(deliveries: Sequence[Delivery], *, timeout: float) -> list[BaseException | None]:
    """Wait for deliveries, all within `timeout` seconds from now; for each, None once Kafka acknowledged it, else
    its error. Records sharing a batch (fast path `kafka_batches`) are settled by one look at the batch's future."""
    deadline = time.monotonic() + timeout
    settled: dict[int, Any] = {}
    errors: list[BaseException | None] = []
    for delivery in deliveries:
        if type(delivery) is kafka_batches.BatchAck:
            errors.append(kafka_batches.ack_error(delivery, deadline, settled))
        else:
            errors.append(delivery_error(delivery, timeout=max(0.1, deadline - time.monotonic())))
    return errors


def delivery_position(delivery: Delivery) -> tuple[int, int] | None:
    """(partition, offset) of an acknowledged delivery, None when it is not acknowledged (or Kafka gave none)."""
    if type(delivery) is kafka_batches.BatchAck:
        return kafka_batches.ack_position(delivery)
    if not delivery.succeeded():
        return None
    metadata = delivery.value  # RecordMetadata
    return (int(metadata.partition), int(metadata.offset)) if metadata.offset >= 0 else None


def delivery_error(delivery: Delivery, *, timeout: float) -> BaseException | None:
    """Wait up to `timeout` seconds for one delivery; None once Kafka acknowledged it, else its error."""
    if type(delivery) is kafka_batches.BatchAck:
        return delivery_errors([delivery], timeout=timeout)[0]
    try:
        if not delivery.is_done:  # after flush() nearly all are done: no get() and its timer per record
            delivery.get(timeout=timeout)
        elif delivery.failed():
            return delivery.exception
    except Exception as exc:
        return exc
    return None


Outgoing = kafka_batches.Outgoing


class BatchSender:
    """Sends the records of one round the publisher built itself (`Outgoing`). Returns one delivery per record,
    in order: a `kafka_batches.BatchAck`, the future of `send()`, or the exception `send()` raised.

    With the fast path `kafka_batches` on, the records it can take are appended to the producer's accumulator in
    bulk (see fastpaths/kafka_batches.py); everything else, and everything when it is off, goes through
    `producer.send()`. After a retryable refusal by `send()` (no metadata, buffer full) the round's later records
    get the same error instead of waiting again each. Made once per round of sends."""

    def __init__(self, producer: KafkaProducer, *, topic_limits: Mapping[str, int]) -> None:
        self._producer = producer
        self._bulk = kafka_batches.bulk_appender(producer, topic_limits=topic_limits)

    def send_many(self, records: Sequence[Outgoing], *, sizes: Sequence[int]) -> list[Delivery | BaseException]:
        """`sizes`: each record's size, estimated generously (framing included, compression not counted)."""
        deliveries: list[Delivery | BaseException | None] = [None] * len(records)
        if self._bulk is None:
            fallback = list(range(len(records)))
        else:
            taken, fallback = self._bulk.append(records, sizes)
            for position, delivery in taken.items():
                deliveries[position] = delivery
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
        # record and per flush (docs/performance.md, third round).
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
    """Flush what is buffered and close (the transactional producer too); called on worker shutdown so nothing
    waits in memory. A transaction still open is left to the broker, which aborts it."""
    global _producer, _producer_pid
    with _lock:
        producer, owner = _producer, _producer_pid
        _producer, _producer_pid = None, None
    if producer is not None and owner == os.getpid():
        try:
            producer.flush(timeout=timeout)
        finally:
            producer.close(timeout=timeout)
    with _transactional_lock:
        transactional, owner = _transactional.producer, _transactional.pid
        _transactional.producer = _transactional.pid = None
    if transactional is not None and owner == os.getpid():
        transactional.close(timeout=timeout)


def producer_is_broken() -> bool:
    """True when the idempotent producer hit an error it cannot continue after (kafka-python moves it to a
    fatal state, e.g. on a record too large for the broker); it must then be replaced. Known only with the fast
    path `kafka_batches` on (kafka-python has no public accessor); off, this is always False."""
    return kafka_batches.has_fatal_error(_producer)


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


# --- Transactions (KAFKA_TRANSACTIONS) ---------------------------------------------------------------------------
#
# One transactional producer per process, beside the plain one (which dead-letter copies and replays keep using:
# they are not publish rounds). Its transactional id is stable per worker slot, <prefix>.<worker name>.<pool
# slot>: a pool process Celery starts in place of a dead one gets the dead one's slot, and so its id, and its
# init_transactions() fences the predecessor and settles the transaction it left open (aborted, or completed if
# it had asked to commit). A slot's id is never used by two live processes: Celery worker names are unique per
# host (`-n`), the prefix tells deployments sharing a cluster apart.


@dataclass
class _TransactionalSlot:
    producer: KafkaProducer | None = None
    pid: int | None = None


_transactional = _TransactionalSlot()
_transactional_lock = threading.Lock()
# One round in a transaction at a time per process (a transaction is the producer's, not a thread's).
transaction_lock = threading.Lock()
_worker_name: str | None = None
# The commit or abort of a round gets at least this long (seconds) out of the round's time.
TRANSACTION_END_SECONDS = 2.0


def transactions_on() -> bool:
    return bool(settings.KAFKA_TRANSACTIONS)


def set_worker_name(name: str) -> None:
    """The Celery worker's node name (`celery@host`, unique per host), told by the worker before it forks."""
    global _worker_name
    _worker_name = name


def transactional_id() -> str:
    """<prefix>.<worker name>.<slot>: the pool process index in a prefork pool, `main` for the worker's own process
    (solo pool); outside a Celery worker (a shell, a test), the host and the process id, which are never reused."""
    from celery.utils.log import current_process_index

    prefix = settings.KAFKA_TRANSACTIONAL_ID_PREFIX
    if _worker_name is None:
        return f"{prefix}.{socket.gethostname()}.pid{os.getpid()}"
    index = current_process_index(base=0)
    return f"{prefix}.{_worker_name}.{'main' if index is None else index}"


def transaction_timeout_seconds() -> float:
    """How long the broker lets a transaction stay open before aborting it (a worker that died mid-round and whose
    slot does not come back). A round lasts publisher.retry_budget.round_seconds() at most; this leaves room,
    within the broker's default transaction.max.timeout.ms (15 min)."""
    return min(900.0, max(10.0, 3 * float(settings.KAFKA_PRODUCER_TIMEOUT)))


def transactional_producer() -> KafkaProducer:
    """This process's transactional producer, created and initialised (init_transactions) on first use."""
    pid = os.getpid()
    slot = _transactional
    if slot.producer is not None and slot.pid == pid:
        return slot.producer
    with _transactional_lock:
        if slot.producer is None or slot.pid != pid:
            tid = transactional_id()
            producer = KafkaProducer(
                **producer_config(
                    transactional_id=tid, transaction_timeout_ms=int(transaction_timeout_seconds() * 1000)
                )
            )
            try:
                producer.init_transactions()
            except BaseException:
                producer.close(timeout=0)
                raise
            slot.producer, slot.pid = producer, pid
            logger.info("kafka transactional producer %s ready", tid, extra={"pid": pid, "transactional_id": tid})
    return slot.producer


def replace_transactional_producer(*, settle: bool) -> None:
    """Drop this process's transactional producer (it hit an error, or a commit's outcome is unknown); the next
    round makes a new one. `settle`: make it now, in the background, because its init_transactions() settles the
    transaction the old one left (completes a commit it asked for, aborts the rest), which Kafka is about to be
    read for."""
    with _transactional_lock:
        producer, _transactional.producer, _transactional.pid = _transactional.producer, None, None
    if producer is not None:
        # close(timeout=0) refuses while records are pending (its flush times out) and leaves the client's network
        # thread running; closing with time for them to expire (or be fenced by the successor) ends it.
        timeout = float(settings.KAFKA_PRODUCER_TIMEOUT) + 5.0
        threading.Thread(target=_close_quietly, args=(producer, timeout), name="kafka-close", daemon=True).start()
    if settle:
        _make_transactional_producer_in_background()


def _close_quietly(producer: KafkaProducer, timeout: float, *, attempts: int = 10) -> None:
    """While Kafka is unreachable a transactional producer's pending requests neither finish nor expire, so its
    close keeps timing out: try again, as long as an outage is worth waiting for."""
    for _ in range(attempts):
        try:
            producer.close(timeout=timeout)
            return
        except Exception as exc:
            error = exc
    logger.warning("could not close a replaced transactional producer: %r", error)


def end_transaction(producer: KafkaProducer, *, commit: bool, timeout: float) -> BaseException | None:
    """Commit or abort the open transaction, waiting `timeout` seconds at most; None when the broker confirmed it,
    else the error (KafkaTimeoutError: outcome unknown). kafka-python waits for the coordinator's answer without
    a time limit (and a closed producer never answers), so the call runs in a thread of its own; one that times
    out is left waiting, with the producer the caller must then replace."""
    outcome: list[BaseException | None] = []
    end = producer.commit_transaction if commit else producer.abort_transaction

    def run() -> None:
        try:
            end()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, name="kafka-end-transaction", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        what = "commit" if commit else "abort"
        return KafkaTimeoutError(f"no answer to the transaction's {what} within {timeout:.1f} s")
    return outcome[0]


def prepare_transactional_slot() -> None:
    """In a fresh pool process: make the transactional producer now, in the background, so that a dead
    predecessor's open transaction is settled at once rather than when the first task arrives."""
    if transactions_on():
        _make_transactional_producer_in_background()


def _make_transactional_producer_in_background() -> None:
    def run() -> None:
        try:
            transactional_producer()
        except Exception as exc:
            logger.warning("could not make a transactional producer yet: %r", exc)

    threading.Thread(target=run, name="kafka-transactions-init", daemon=True).start()


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


# How far a redelivered task looks back into Kafka, at most (records, seconds): past that it sends again.
FIND_MAX_RECORDS = 2_000_000
FIND_MAX_SECONDS = 30.0


def find_written(*, topics: Iterable[str], since: float, event_ids: set[str]) -> set[tuple[str, str]] | None:
    """(event_id, topic) pairs among `event_ids` that some producer wrote to `topics` since the wall-clock time
    `since` (record timestamps), read with a short-lived consumer. None when Kafka could not be read in bounded
    time: the caller must then assume nothing was written.

    A cluster that lost a partition leader answers metadata but not that partition until the dead broker is
    fenced and a new leader elected (seconds): a transient error after the bootstrap is read again, with fresh
    metadata, within the same bounded time, rather than answered "unreadable" (which would send twice what the
    dead leader had already replicated).

    With KAFKA_TRANSACTIONS on, only committed records count (isolation_level=read_committed), and the read goes
    up to the end of each partition as it is now, committed or not: it waits until every transaction with
    records before that end is settled, so a round a dead worker left open is counted only if it commits."""
    transactional = transactions_on()
    # Long enough to see a dead worker's open transaction aborted by the broker's timeout.
    limit = max(FIND_MAX_SECONDS, transaction_timeout_seconds() + 10) if transactional else FIND_MAX_SECONDS
    deadline = time.monotonic() + limit
    options = _lookup_options()
    while True:
        try:
            consumer = KafkaConsumer(
                **options, isolation_level="read_committed" if transactional else "read_uncommitted"
            )
        except Exception as exc:  # Kafka down: nothing can be written while it is; the caller sends again
            logger.warning("cannot look for records a dead run wrote: %r", exc)
            return None
        try:
            return _find_written(
                consumer, options, transactional=transactional, topics=topics, since=since, event_ids=event_ids,
                deadline=deadline,
            )  # fmt: skip
        except Exception as exc:
            if not is_retryable(exc) or time.monotonic() + 1.0 > deadline:
                logger.warning("cannot look for records a dead run wrote: %r", exc)
                return None
            logger.info("looking for records a dead run wrote failed (%r); reading again", exc)
        finally:
            consumer.close()
        time.sleep(0.5)


def _lookup_options() -> dict[str, Any]:
    timeout_ms = int(settings.KAFKA_PRODUCER_TIMEOUT * 1000)
    return connection_config() | {
        "enable_auto_commit": False,
        # Kafka still down: give up soon, the caller sends again (nothing can be written while it is down).
        "bootstrap_timeout_ms": min(timeout_ms, 2000),
        "request_timeout_ms": max(timeout_ms, 1000) + 500,
        "fetch_max_bytes": 16 * 1024 * 1024,
    }


def _find_written(
    consumer: KafkaConsumer,
    options: Mapping[str, Any],
    *,
    transactional: bool,
    topics: Iterable[str],
    since: float,
    event_ids: set[str],
    deadline: float,
) -> set[tuple[str, str]] | None:
    """One reading of find_written; raises what the client raises, None when out of time or records."""
    partitions = [
        TopicPartition(topic, p) for topic in topics for p in sorted(consumer.partitions_for_topic(topic) or [])
    ]
    consumer.assign(partitions)
    starts = consumer.offsets_for_times({tp: int(since * 1000) for tp in partitions})
    # A read_committed consumer's end offsets stop before the first open transaction: take the real ends.
    ends = _high_watermarks(options, partitions) if transactional else consumer.end_offsets(partitions)
    pending = {}
    for tp in partitions:
        start = starts.get(tp)
        if start is not None and start.offset < ends[tp]:
            consumer.seek(tp, start.offset)
            pending[tp] = ends[tp]
    consumer.pause(*(tp for tp in partitions if tp not in pending))
    return _scan_for_event_ids(consumer, pending, event_ids, deadline=deadline)


def _high_watermarks(options: Mapping[str, Any], partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
    consumer = KafkaConsumer(**options)
    try:
        return dict(consumer.end_offsets(partitions))
    finally:
        consumer.close()


def _scan_for_event_ids(
    consumer: KafkaConsumer, pending: dict[TopicPartition, int], event_ids: set[str], *, deadline: float
) -> set[tuple[str, str]] | None:
    """Read each pending partition up to its end offset; the (event_id, topic) pairs found, None past the limits."""
    found: set[tuple[str, str]] = set()
    scanned = 0
    while pending:
        if time.monotonic() > deadline or scanned > FIND_MAX_RECORDS:
            logger.warning("gave up looking for records a dead run wrote (%d read)", scanned)
            return None
        for tp, records in consumer.poll(timeout_ms=500).items():
            for record in records:
                if record.offset >= pending.get(tp, 0):
                    break
                scanned += 1
                for name, value in record.headers or ():
                    if name == "event_id":
                        event_id = value.decode(errors="replace")
                        if event_id in event_ids:
                            found.add((event_id, tp.topic))
                        break
        # Checked for every partition, not only those that returned records: a partition can end with what a
        # consumer never sees (a transaction's commit or abort marker, an aborted transaction's records).
        for tp in [tp for tp, end in pending.items() if consumer.position(tp) >= end]:
            del pending[tp]
            consumer.pause(tp)
    return found


def topic_reader(*, max_poll_records: int) -> KafkaConsumer:
    """A consumer outside any group (the caller assigns partitions and seeks; nothing is committed), for reading
    a topic's stored records, e.g. a replay by time range."""
    timeout_ms = int(settings.KAFKA_PRODUCER_TIMEOUT * 1000)
    return KafkaConsumer(
        **connection_config(),
        enable_auto_commit=False,
        # Records removed by retention since the job fixed its window: go on from the oldest still there.
        auto_offset_reset="earliest",
        max_poll_records=max_poll_records,
        bootstrap_timeout_ms=timeout_ms,
        request_timeout_ms=max(timeout_ms, 1000) + 500,
    )


@dataclass(frozen=True)
class StoredRecord:
    value: bytes
    headers: dict[str, bytes]
    timestamp_ms: int


def read_record(*, topic: str, partition: int, offset: int, timeout: float = 5.0) -> StoredRecord | None:
    """The record at (topic, partition, offset), read with a short-lived consumer; None when it is not there
    (deleted by retention, or Kafka unreachable within `timeout`)."""
    try:
        consumer = KafkaConsumer(
            **connection_config(),
            enable_auto_commit=False,
            bootstrap_timeout_ms=int(timeout * 1000),
            request_timeout_ms=int(timeout * 1000) + 500,
        )
    except Exception as exc:
        logger.warning("cannot read %s[%d]@%d: %r", topic, partition, offset, exc)
        return None
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in consumer.poll(timeout_ms=500, max_records=1).get(tp, []):
                if record.offset != offset:
                    return None  # compacted or deleted: the next one came back instead
                return StoredRecord(record.value or b"", dict(record.headers or ()), record.timestamp)
        return None
    except Exception as exc:
        logger.warning("cannot read %s[%d]@%d: %r", topic, partition, offset, exc)
        return None
    finally:
        consumer.close()


def list_topics(**admin_overrides: Any) -> set[str]:
    """The topic names the cluster has (a short-lived admin client; raises if no broker answers)."""
    admin = admin_client(**admin_overrides)
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


@dataclass(frozen=True)
class Replication:
    """How the topics ensure_topics creates are replicated: copies of each partition, and how many of them must
    have a record before a write with acks=all (our producer's) succeeds."""

    factor: int
    min_insync_replicas: int
    live_brokers: int


@dataclass(frozen=True)
class UnderReplicatedTopic:
    """An existing topic replicated less than ensure_topics would create it (it never changes existing topics)."""

    name: str
    replication_factor: int
    min_insync_replicas: int


@dataclass(frozen=True)
class EnsureTopicsResult:
    created: list[str]
    existing: list[str]
    replication: Replication
    under_replicated: list[UnderReplicatedTopic] = field(default_factory=list)


class ReplicationError(ValueError):
    pass


def replication_for(*, live_brokers: int, replication_factor: int | None) -> Replication:
    """The replication for new topics: `replication_factor` copies, or (None) min(3, live brokers); with 3 copies
    or more a write needs 2 in sync (one broker may fail without losing or refusing an acknowledged record),
    below that 1 (with 2 copies, needing both would stop writes whenever either broker is down)."""
    factor = min(3, live_brokers) if replication_factor is None else replication_factor
    if factor < 1:
        raise ReplicationError("no live Kafka broker to place replicas on")
    if factor > live_brokers:
        raise ReplicationError(
            f"replication factor {factor} needs {factor} live brokers, the cluster has {live_brokers}"
        )
    return Replication(factor=factor, min_insync_replicas=2 if factor >= 3 else 1, live_brokers=live_brokers)


def live_broker_count(admin: KafkaAdminClient) -> int:
    """Brokers registered and not fenced (a killed broker is fenced once its session times out)."""
    brokers = admin.describe_cluster()["brokers"]
    return sum(1 for broker in brokers if not broker.get("is_fenced"))


def ensure_topics(
    *, names: Iterable[str], partitions: int, replication_factor: int | None = None
) -> EnsureTopicsResult:
    """Create the topics that do not exist yet; leave existing ones (and their settings) alone, but report those
    replicated less than new ones would be. `replication_factor` None: as replication_for decides."""
    wanted = list(dict.fromkeys(names))
    admin = admin_client()
    try:
        replication = replication_for(live_brokers=live_broker_count(admin), replication_factor=replication_factor)
        # Only when above the broker default (1): a single broker's topics stay exactly as they always were.
        configs = {"min.insync.replicas": str(replication.min_insync_replicas)}
        configs = configs if replication.min_insync_replicas > 1 else {}
        present = set(admin.list_topics())
        missing = [name for name in wanted if name not in present]
        created: list[str] = []
        spec = {"num_partitions": partitions, "replication_factor": replication.factor, "configs": configs}
        for name in missing:
            try:
                admin.create_topics({name: spec}, wait_for_metadata=True)
                created.append(name)
            except TopicAlreadyExistsError:
                pass  # created concurrently by another process: that is what we wanted
        existing = [name for name in wanted if name in present]
        return EnsureTopicsResult(
            created=created,
            existing=existing,
            replication=replication,
            under_replicated=_under_replicated(admin, existing, replication),
        )
    finally:
        admin.close()


def _under_replicated(admin: KafkaAdminClient, names: list[str], wanted: Replication) -> list[UnderReplicatedTopic]:
    """The topics among `names` with fewer copies (of any partition) or a lower min.insync.replicas than wanted."""
    if not names:
        return []
    factors = {
        topic["name"]: min((len(p["replica_nodes"]) for p in topic["partitions"]), default=0)
        for topic in admin.describe_topics(names)
        if not topic.get("error_code")
    }
    described = admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name, {"min.insync.replicas": None}) for name in factors],
        config_filter="all",
    )
    min_isr = {
        name: int(configs.get("min.insync.replicas", {}).get("value") or 1)
        for name, configs in described.get("topic", {}).items()
    }
    weak = []
    for name, factor in factors.items():
        isr = min_isr.get(name, 1)
        if factor < wanted.factor or isr < wanted.min_insync_replicas:
            weak.append(UnderReplicatedTopic(name=name, replication_factor=factor, min_insync_replicas=isr))
    return weak
