"""Trace an event (the admin screen): everything the service knows of one event, by its id or by the attempt it
records (user id + client attempt id).

Sources: the receipt in Redis (status, deliveries with partition and offset; kept INGEST_DEDUP_TTL), the
dead-letter table (the event as accepted, why it failed, its replays) and, for a published event, the record
itself read back from Kafka. The event found (a dead letter's payload, else the first delivered record) is
routed with the rules as they are now, to show which rules match it today.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rest_framework_api_key.models import APIKey

from config.redis import get_redis
from events.schema import DEDUP_PREFIX, attempt_dedup_key
from events.serialization import CONTENT_TYPES, SerializationError, decode_value
from publisher import kafka_gateway, receipts, selectors
from publisher.models import DeadLetter, ReplayAttempt
from routing.services import current_routing

logger = logging.getLogger(__name__)


@dataclass
class DeadLetterTrace:
    row: DeadLetter
    replays: list[ReplayAttempt]


@dataclass
class EventTrace:
    event_id: str
    receipt: receipts.Receipt | None
    event: dict[str, Any] | None  # as accepted (a dead letter's payload) or as published (read from Kafka)
    event_from: str  # where `event` was found, for the operator
    matched_rules: list[str] = field(default_factory=list)
    topics_now: list[str] = field(default_factory=list)
    dead_letters: list[DeadLetterTrace] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what could not be looked at, and why

    @property
    def known(self) -> bool:
        return self.receipt is not None or bool(self.dead_letters)

    @property
    def event_pretty(self) -> str:
        return json.dumps(self.event, indent=2, sort_keys=True, ensure_ascii=False) if self.event is not None else ""

    @property
    def api_key_name(self) -> str:
        """The name of the API key that sent it (receipts keep only the key's prefix)."""
        owner = self.receipt.owner if self.receipt is not None else ""
        if not owner:
            return ""
        name = APIKey.objects.filter(prefix=owner).values_list("name", flat=True).first()
        return name if name is not None else "(deleted key)"

    @property
    def accepted_at(self) -> datetime | None:
        at = self.receipt.accepted_at if self.receipt is not None else None
        return datetime.fromtimestamp(at, UTC) if at is not None else None


def canonical_event_id(text: str) -> str | None:
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        return None


def event_ids_for_attempt(*, user_id: str, client_attempt_id: str) -> list[str]:
    """The event ids recorded for one attempt: the dedup mark (held INGEST_DEDUP_TTL) and any dead letters."""
    found: list[str] = []
    try:
        holder = get_redis().get(DEDUP_PREFIX + attempt_dedup_key(user_id, client_attempt_id))
    except Exception as exc:
        logger.warning("dedup marks unreadable: %r", exc)
        holder = None
    if holder:
        text = holder.decode() if isinstance(holder, bytes) else str(holder)
        canonical = canonical_event_id(text)  # a mark still pending ("p:<id>") is no answer yet
        if canonical is not None:
            found.append(canonical)
    rows = DeadLetter.objects.filter(
        user_id=user_id[:128], event_type="attempt", payload__client_attempt_id=client_attempt_id
    ).values_list("event_id", flat=True)
    for event_id in rows:
        if str(event_id) not in found:
            found.append(str(event_id))
    return found


def trace_event(*, event_id: str, read_kafka: bool = True) -> EventTrace:
    """Everything known of `event_id` (canonical UUID text)."""
    notes: list[str] = []
    try:
        receipt = receipts.read(event_id=event_id)
    except Exception as exc:
        receipt = None
        notes.append(f"Receipts unreadable (Redis): {exc!r}")
    rows = list(DeadLetter.objects.filter(event_id=event_id).order_by("id"))
    trace = EventTrace(
        event_id=event_id,
        receipt=receipt,
        event=None,
        event_from="",
        dead_letters=[DeadLetterTrace(row, selectors.replay_attempts(row)) for row in rows],
        notes=notes,
    )
    if rows:
        trace.event, trace.event_from = dict(rows[0].payload), f"dead letter #{rows[0].pk} (as accepted)"
    elif receipt is not None and receipt.deliveries and read_kafka:
        trace.event, trace.event_from = _published_event(receipt.deliveries, notes)
    if trace.event is not None:
        decision = current_routing().route(trace.event)
        trace.matched_rules = list(decision.matched_rules)
        trace.topics_now = list(decision.topics)
    elif trace.known:
        notes.append("The event itself was not found, so today's matching rules cannot be shown.")
    return trace


def _published_event(deliveries: list[receipts.Delivery], notes: list[str]) -> tuple[dict[str, Any] | None, str]:
    for delivery in deliveries:
        record = kafka_gateway.read_record(topic=delivery.topic, partition=delivery.partition, offset=delivery.offset)
        if record is None:
            notes.append(f"{delivery.topic}[{delivery.partition}]@{delivery.offset}: not readable in Kafka.")
            continue
        content_type = record.headers.get("content-type", CONTENT_TYPES["json"].encode()).decode()
        schema = record.headers.get("schema", b"").decode()
        try:
            event = decode_value(record.value, content_type=content_type, schema=schema)
        except SerializationError as exc:
            notes.append(f"{delivery.topic}[{delivery.partition}]@{delivery.offset}: cannot decode ({exc}).")
            continue
        return event, f"{delivery.topic} partition {delivery.partition} offset {delivery.offset} (as published)"
    return None, ""
