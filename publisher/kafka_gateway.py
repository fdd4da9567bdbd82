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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import TopicAlreadyExistsError
from kafka.partitioner.default import DefaultPartitioner, murmur2
from kafka.structs import TopicPartition

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
        hashed = self._hashes.get(serialized_key)
        if hashed is None:
            if len(self._hashes) >= self._MAX_KEYS:
                self._hashes.clear()
            hashed = self._hashes[serialized_key] = murmur2(serialized_key) & 0x7FFFFFFF
        ordered = sorted(partitions)
        return int(ordered[hashed % len(ordered)])


class CheckedSender:
    """`producer.send()` for records the publisher built itself: bytes key and value, (str, bytes) headers, and a
    size already estimated (`size_estimate`, generous). `send()` returns the same delivery future.

    Why: kafka-python's `send()` spends several µs per record re-checking what is known here (header types, a
    size estimate walking every header, serializers, a debug-log string): `bench.task_cost`, 100-event tasks,
    59-62 -> 51-59 µs of worker CPU per record. Past the checks, this does what `send()` does for a keyed record
    to an idempotent, non-transactional producer: partition with the configured partitioner, append to the
    record accumulator, wake the sender when a batch fills or starts. Anything else takes `send()` itself: a
    producer without those parts (another kafka-python version), a transactional one, a record without a key, a
    topic whose partitions are not known yet (send() waits for the metadata), or a record near
    `max_request_size` (send() refuses it with its own error). Made once per round of sends."""

    def __init__(self, producer: KafkaProducer) -> None:
        self._producer = producer
        self._parts = _fast_path_parts(producer)
        self._max_size = int(producer.config["max_request_size"])

    def send(
        self, topic: str, *, key: bytes, value: bytes, headers: list[tuple[str, bytes]], size_estimate: int
    ) -> Any:
        parts = self._parts
        if (
            parts is None
            or not key
            or size_estimate >= self._max_size
            or not parts.metadata.partitions_for_topic(topic)
        ):
            return self._producer.send(topic, key=key, value=value, headers=headers)
        partition = parts.partitioner.partition(topic, key, key, value, value, parts.metadata)
        future, batch_is_full, new_batch_created, _ = parts.accumulator.append(
            TopicPartition(topic, partition), None, key, value, headers
        )
        if batch_is_full or new_batch_created:
            parts.sender.wakeup()
        return future


@dataclass(frozen=True)
class _FastPathParts:
    metadata: Any
    accumulator: Any
    sender: Any
    partitioner: Any


def _fast_path_parts(producer: KafkaProducer) -> _FastPathParts | None:
    """The producer's internals `CheckedSender` needs (kafka-python 3.0's names, checked rather than assumed), or
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
    if metadata is None or not callable(getattr(accumulator, "append", None)) or sender is None:
        return None
    return _FastPathParts(metadata, accumulator, sender, config["partitioner"])


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
