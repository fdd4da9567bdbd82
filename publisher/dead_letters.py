"""Writing dead letters: a row in Postgres (the operators' record, always) and a copy in `dlq.events` with the
original key, value and headers plus why it failed (best effort: if Kafka is down the row alone is kept)."""

from __future__ import annotations

import base64
import functools
import json
import logging
import operator
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import Q

from config.redis import get_redis
from events.timefmt import utc_iso_ms
from events.tracecontext import parse_traceparent
from publisher import breaker, kafka_gateway, metrics, receipts
from publisher.errors import error_class, is_database_outage
from publisher.models import DeadLetter

if TYPE_CHECKING:
    from publisher.publishing import Record

logger = logging.getLogger(__name__)


def _dlq_headers(record: Record, *, reason: str, now: datetime, replay_count: int) -> list[tuple[str, bytes]]:
    exc = record.error
    message = str(exc) if exc is not None else ""
    klass = error_class(exc) if exc is not None else ""
    full_class = f"{type(exc).__module__}.{type(exc).__qualname__}" if exc is not None else ""
    return [
        *record.headers,
        ("dlq_reason", reason.encode()),
        ("dlq_timestamp", utc_iso_ms(now).encode()),
        ("original_topic", record.topic.encode()),
        ("dlq_error_class", klass.encode()),
        ("dlq_attempts", str(record.attempts).encode()),
        ("dlq_replay_count", str(replay_count).encode()),
        # The names Kafka Connect uses, so existing DLQ tooling understands these records.
        ("__connect.errors.topic", record.topic.encode()),
        ("__connect.errors.exception.class.name", full_class.encode()),
        ("__connect.errors.exception.message", message[:1000].encode()),
    ]


_UPSERT_FIELDS = [
    "payload", "value", "headers", "reason", "error_class", "error_message",
    "attempts", "last_failed_at", "status", "quarantine_reason", "original_b64", "trace_id",
]  # fmt: skip


def _trace_of(record: Record) -> tuple[str, str]:
    """(trace id, parent id) of the record's traceparent header, ('', '') without one."""
    for name, value in record.headers:
        if name == "traceparent":
            context = parse_traceparent(value.decode(errors="replace"))
            return ("", "") if context is None else (context.trace_id, context.parent_id)
    return "", ""


def record(*, events: Sequence[Mapping[str, Any]], failures: Sequence[tuple[Record, str]], source: str) -> None:
    """Persist the failures (raises DatabaseError only when Postgres cannot be reached, so the caller can defer),
    then copy them to the dead-letter topic. Data the database refuses never holds the others back: such a row
    is stored sanitized and quarantined, with the event as accepted in base64."""
    now = datetime.now(UTC)
    rows: list[DeadLetter] = []
    traces = [_trace_of(rec) for rec, _ in failures]
    for (rec, reason), (trace_id, _) in zip(failures, traces, strict=True):
        event = events[rec.index]
        exc = rec.error
        rows.append(
            DeadLetter(
                event_id=event["event_id"],
                event_type=event["event_type"],
                original_topic=rec.topic,
                key=rec.key.decode(errors="replace")[:256],
                user_id=str(event.get("user_id", ""))[:128],
                payload=dict(event),
                value=rec.value,
                headers=[[name, value.decode(errors="replace")] for name, value in rec.headers],
                format=rec.fmt,
                schema_version=int(event.get("schema_version", 1)),
                source=source[:128],
                reason=reason,
                error_class=error_class(exc) if exc is not None else "",
                error_message=str(exc)[:4000] if exc is not None else "",
                attempts=rec.attempts,
                first_failed_at=now,
                last_failed_at=now,
                status=DeadLetter.Status.PENDING,
                quarantine_reason="",
                original_b64="",
                trace_id=trace_id,
            )
        )
    try:
        _upsert(rows)
    except DatabaseError as exc:
        if is_database_outage(exc):
            raise
        logger.warning("the database refused a batch of %d dead letters (%s); storing them one by one", len(rows), exc)
        for row in rows:
            _store_alone(row)
    if receipts.enabled():
        try:
            _note_receipts(rows)
        except Exception as exc:  # the dead letters are stored; a receipt is only a view of that
            logger.warning("receipts of %d dead letters not noted: %r", len(rows), exc)
    for (rec, reason), (trace_id, span_id) in zip(failures, traces, strict=True):
        metrics.DEAD_LETTERED.labels(topic=rec.topic, reason=reason).inc()
        logger.warning(
            "dead-lettered %s -> %s: %s",
            events[rec.index].get("event_id"),
            rec.topic,
            reason,
            extra={
                "event": "dead_letter",
                "event_id": str(events[rec.index].get("event_id")),
                "topic": rec.topic,
                # This event's own trace: the task's lines may name several.
                "trace_id": trace_id,
                "span_id": span_id,
            },
        )
    _copy_to_kafka(events, failures, now=now)
    _flood_guard(len(failures))


def _note_receipts(rows: Sequence[DeadLetter]) -> None:
    """Each event's receipt names its dead letters (their ids are read back: an upsert may have met an old row)."""
    stored = DeadLetter.objects.filter(
        event_id__in={row.event_id for row in rows}, original_topic__in={row.original_topic for row in rows}
    ).values_list("event_id", "original_topic", "id", "reason")
    wanted = {(str(row.event_id), row.original_topic) for row in rows}
    receipts.note_dead_letters(
        dead_letters=[(str(e), topic, pk, reason) for e, topic, pk, reason in stored if (str(e), topic) in wanted]
    )


def _upsert(rows: list[DeadLetter]) -> None:
    with transaction.atomic():
        DeadLetter.objects.bulk_create(
            rows, update_conflicts=True, unique_fields=["event_id", "original_topic"], update_fields=_UPSERT_FIELDS
        )


def _store_alone(row: DeadLetter) -> None:
    try:
        _upsert([row])
        return
    except DatabaseError as exc:
        if is_database_outage(exc):
            raise
        refusal = exc
    logger.error(
        "dead letter %s -> %s refused by the database (%s); stored sanitized and quarantined",
        row.event_id,
        row.original_topic,
        refusal,
        extra={"event": "dead_letter_quarantined", "event_id": str(row.event_id), "topic": row.original_topic},
    )
    try:
        _upsert([_sanitized(row, refusal, ascii_only=False)])
    except DatabaseError as exc:
        if is_database_outage(exc):
            raise
        _upsert([_sanitized(row, refusal, ascii_only=True)])  # nothing left that a text column could refuse


def _sanitized(row: DeadLetter, refusal: Exception, *, ascii_only: bool) -> DeadLetter:
    """A copy of `row` every text column takes: control characters and unpaired surrogates escaped."""

    def text(value: str) -> str:
        if ascii_only:
            return json.dumps(value)[1:-1]
        return value.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\u0000")

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return text(value)
        if isinstance(value, dict):
            return {text(str(k)): clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    original = json.dumps(row.payload, ensure_ascii=True, separators=(",", ":")).encode()
    return DeadLetter(
        event_id=row.event_id,
        event_type=text(row.event_type)[:16],
        original_topic=row.original_topic,
        key=text(row.key)[:256],
        user_id=text(row.user_id)[:128],
        payload=clean(row.payload),
        value=row.value,
        headers=clean(row.headers),
        format=row.format,
        schema_version=row.schema_version,
        source=text(row.source)[:128],
        reason=row.reason,
        error_class=text(row.error_class)[:128],
        error_message=text(row.error_message),
        attempts=row.attempts,
        first_failed_at=row.first_failed_at,
        last_failed_at=row.last_failed_at,
        status=DeadLetter.Status.QUARANTINED,
        trace_id=row.trace_id,
        quarantine_reason=text(
            f"the database refused the entry as it was ({refusal}); text shown escaped, "
            "the event as accepted is in original_b64"
        ),
        original_b64=base64.b64encode(original).decode("ascii"),
    )


def _flood_guard(count: int) -> None:
    """When dead letters arrive faster than PUBLISHER_DLQ_FLOOD_PER_MINUTE, something systemic is wrong (a
    bad deploy, a broken topic): open the breaker so work waits in the queue instead of filling the DLQ."""
    limit = int(settings.PUBLISHER_DLQ_FLOOD_PER_MINUTE)
    if limit <= 0:
        return
    key = f"publisher:dlq-rate:{int(time.time() // 60)}"
    try:
        pipe = get_redis().pipeline(transaction=False)
        pipe.incrby(key, count)
        pipe.expire(key, 120)
        total = int(pipe.execute()[0])
    except Exception:
        return
    if total > limit and breaker.current_state() == "closed":
        logger.error(
            "dead-letter flood: %d in this minute (limit %d); opening the circuit breaker",
            total,
            limit,
            extra={"event": "dlq_flood", "count": total, "limit": limit},
        )
        breaker.force_open()


def _copy_to_kafka(
    events: Sequence[Mapping[str, Any]], failures: Sequence[tuple[Record, str]], *, now: datetime
) -> None:
    copied: list[Q] = []
    try:
        producer = kafka_gateway.get_producer()
        sent = [
            (rec, producer.send(
                kafka_gateway.TOPIC_DLQ,
                key=rec.key,
                value=rec.value,
                headers=_dlq_headers(rec, reason=reason, now=now, replay_count=0),
            ))
            for rec, reason in failures
        ]  # fmt: skip
        deadline = time.monotonic() + float(settings.KAFKA_PRODUCER_TIMEOUT)
        for rec, future in sent:
            future.get(timeout=max(0.1, deadline - time.monotonic()))
            copied.append(Q(event_id=events[rec.index]["event_id"], original_topic=rec.topic))
    except Exception as exc:
        logger.warning("dead letters kept in Postgres only; dlq.events unreachable: %r", exc)
    if copied:
        DeadLetter.objects.filter(functools.reduce(operator.or_, copied)).update(in_kafka_dlq=True)
