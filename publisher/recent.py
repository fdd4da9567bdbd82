"""Read the most recent events of some event types back from their Kafka topics, for the routing admin's
*Preview on recent traffic*. Read-only and bounded: a short-lived consumer with no group (nothing committed,
no topic auto-created), at most MAX_RECENT_EVENTS events per type, RECENT_MAX_BYTES of record values and
RECENT_TIMEOUT seconds; past a bound the caller gets what was read, marked incomplete.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from kafka import KafkaConsumer, TopicPartition

from events.serialization import CONTENT_TYPES, SerializationError, decode_value, schema_name
from publisher.kafka_gateway import connection_config

logger = logging.getLogger(__name__)

DEFAULT_RECENT_EVENTS: Final = 1_000
MAX_RECENT_EVENTS: Final = 10_000
RECENT_TIMEOUT: Final = 5.0  # seconds, connecting included
RECENT_MAX_BYTES: Final = 32 * 1024 * 1024  # record values held at once, all topics together


class RecentEventsUnavailable(Exception):
    """Kafka could not be read at all (no broker answered in time)."""


@dataclass(frozen=True, slots=True)
class RecentEvent:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    event_id: str
    event: dict[str, Any]


@dataclass(frozen=True)
class RecentEvents:
    """Newest first, each event once (an event routed to several topics is read from each, kept once), at most
    `limit` per event type."""

    events: tuple[RecentEvent, ...]
    limit: int
    topics: tuple[str, ...]  # the topics read
    missing_topics: tuple[str, ...]  # asked for, but not on the cluster
    undecodable: int = 0  # records of the types that could not be decoded (skipped)
    incomplete: str = ""  # why reading stopped early ("" when every partition was read to its end)
    counts: dict[str, int] = field(default_factory=dict)  # events kept, by type


def clamp_limit(limit: int) -> int:
    return max(1, min(int(limit), MAX_RECENT_EVENTS))


def read_recent_events(
    *,
    topics: Sequence[str],
    event_types: Collection[str],
    limit: int = DEFAULT_RECENT_EVENTS,
    formats: Mapping[str, str] | None = None,
    timeout: float = RECENT_TIMEOUT,
) -> RecentEvents:
    """The last `limit` events (capped at MAX_RECENT_EVENTS) of each of `event_types` found in `topics`.

    Each partition is read from its end offset minus limit/partitions. Records are told apart by their
    `event_type` header (a topic may carry several types) and decoded by their `content-type` and `schema`
    headers, else by the topic's format in `formats`. Raises RecentEventsUnavailable when no broker answers."""
    limit = clamp_limit(limit)
    deadline = time.monotonic() + timeout
    wanted = tuple(dict.fromkeys(topics))
    if not wanted:
        return RecentEvents(events=(), limit=limit, topics=(), missing_topics=())
    try:
        consumer = KafkaConsumer(
            **connection_config(),
            group_id=None,
            enable_auto_commit=False,
            allow_auto_create_topics=False,  # read-only: never create a topic by asking for it
            bootstrap_timeout_ms=int(timeout * 1000),
            request_timeout_ms=int(timeout * 1000) + 500,
            max_partition_fetch_bytes=1024 * 1024,
            fetch_max_bytes=8 * 1024 * 1024,
        )
    except Exception as exc:
        raise RecentEventsUnavailable(f"Kafka could not be reached: {exc}") from None
    try:
        reader = _Reader(consumer, event_types=set(event_types), formats=formats or {}, deadline=deadline)
        missing = reader.assign(wanted, limit)
        incomplete = reader.read_to_end() if reader.pending else ""
    except RecentEventsUnavailable:
        raise
    except Exception as exc:
        raise RecentEventsUnavailable(f"Kafka could not be read: {exc}") from None
    finally:
        consumer.close(autocommit=False)
    events, counts = _newest(reader.found.values(), limit)
    return RecentEvents(
        events=events,
        limit=limit,
        topics=tuple(t for t in wanted if t not in missing),
        missing_topics=tuple(missing),
        undecodable=reader.undecodable,
        incomplete=incomplete,
        counts=counts,
    )


def _newest(found: Collection[RecentEvent], limit: int) -> tuple[tuple[RecentEvent, ...], dict[str, int]]:
    ordered = sorted(found, key=lambda e: (e.timestamp_ms, e.topic, e.partition, e.offset), reverse=True)
    kept: list[RecentEvent] = []
    counts: dict[str, int] = {}
    for item in ordered:
        event_type = str(item.event.get("event_type"))
        if counts.get(event_type, 0) < limit:
            counts[event_type] = counts.get(event_type, 0) + 1
            kept.append(item)
    return tuple(kept), counts


class _Reader:
    def __init__(
        self, consumer: KafkaConsumer, *, event_types: set[str], formats: Mapping[str, str], deadline: float
    ) -> None:
        self.consumer = consumer
        self.event_types = event_types
        self.formats = formats
        self.deadline = deadline
        self.pending: dict[TopicPartition, int] = {}  # partition -> end offset still to reach
        self.found: dict[str, RecentEvent] = {}  # by event id
        self.undecodable = 0
        self.bytes_held = 0

    def _remaining_ms(self) -> int:
        return max(1, int((self.deadline - time.monotonic()) * 1000))

    def assign(self, topics: Sequence[str], limit: int) -> list[str]:
        """Assign every partition of `topics` and seek each to its start; returns the topics that do not exist."""
        missing: list[str] = []
        partitions: dict[str, list[TopicPartition]] = {}
        for topic in topics:
            ids = self.consumer.partitions_for_topic(topic)
            if not ids:
                missing.append(topic)
            else:
                partitions[topic] = [TopicPartition(topic, p) for p in sorted(ids)]
        every = [tp for tps in partitions.values() for tp in tps]
        if not every:
            return missing
        self.consumer.assign(every)
        begins = self.consumer.beginning_offsets(every, timeout_ms=self._remaining_ms())
        ends = self.consumer.end_offsets(every, timeout_ms=self._remaining_ms())
        for tps in partitions.values():
            per_partition = math.ceil(limit / len(tps))
            for tp in tps:
                start = max(begins[tp], ends[tp] - per_partition)
                if start < ends[tp]:
                    self.consumer.seek(tp, start)
                    self.pending[tp] = ends[tp]
        idle = [tp for tp in every if tp not in self.pending]
        if idle:
            self.consumer.pause(*idle)
        return missing

    def read_to_end(self) -> str:
        """Poll until every partition reached the end offset it had when we started; or say why not."""
        while self.pending:
            if time.monotonic() >= self.deadline:
                return f"stopped after {RECENT_TIMEOUT:g} s"
            if self.bytes_held > RECENT_MAX_BYTES:
                return f"stopped after reading {RECENT_MAX_BYTES // (1024 * 1024)} MiB"
            batches = self.consumer.poll(timeout_ms=min(500, self._remaining_ms()))
            for tp, records in batches.items():
                end = self.pending.get(tp)
                if end is None:
                    continue
                for record in records:
                    if record.offset >= end:
                        break
                    self._take(record)
                if self.consumer.position(tp) >= end:
                    del self.pending[tp]
                    self.consumer.pause(tp)
        return ""

    def _take(self, record: Any) -> None:
        headers = {name: value for name, value in (record.headers or ())}
        event_type = headers.get("event_type", b"").decode(errors="replace")
        if event_type not in self.event_types:
            return
        try:
            event = self._decode(record.topic, record.value or b"", headers, event_type)
        except (SerializationError, ValueError):
            self.undecodable += 1
            return
        if event.get("event_type") != event_type:
            self.undecodable += 1  # header and payload disagree: not a record we can reason about
            return
        event_id = headers.get("event_id", b"").decode(errors="replace") or str(event.get("event_id") or "")
        event_id = event_id or f"{record.topic}/{record.partition}/{record.offset}"
        if event_id in self.found:
            return
        self.bytes_held += len(record.value or b"")
        self.found[event_id] = RecentEvent(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=int(record.timestamp or 0),
            event_id=event_id,
            event=event,
        )

    def _decode(self, topic: str, value: bytes, headers: Mapping[str, bytes], event_type: str) -> dict[str, Any]:
        content_type = headers.get("content-type", b"").decode(errors="replace")
        schema = headers.get("schema", b"").decode(errors="replace")
        if not content_type or not schema:
            fmt = self.formats.get(topic, "json")
            content_type, schema = CONTENT_TYPES[fmt], schema_name(event_type, fmt)
        return decode_value(value, content_type=content_type, schema=schema)
