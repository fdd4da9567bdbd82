"""Receipts: what became of each accepted event, for its producer (`GET /api/v1/events/<id>`) and for the admin's
Trace an event screen.

One Redis hash per event, `receipt:<event_id>`, kept INGEST_DEDUP_TTL after its last change (so a producer can
ask about an event as long as it may send it again):
- at admission, in the same atomic step that queues its task (or just before the task, when admitting in
  steps): `status` queued, `owner` (the API key's prefix), `source` (its name), `accepted_at`;
- by the worker once Kafka acknowledged: `d:<topic>` = "partition:offset" per delivery, then `status`
  published (or unrouted) when the event has nothing left to deliver;
- by the dead-letter writer: `x:<topic>` = "dead-letter id:reason" (any such field makes it dead-lettered);
- for a duplicate whose event id differs from the original's: `status` duplicate, `duplicate_of`.

Receipts are a view, not the record (Kafka and the dead-letter table are): the worker's writes travel with the
task's other deferred Redis writes, and a lost one leaves a receipt behind, never an event.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from redis.client import Pipeline

from config.redis import get_redis, script, writes

logger = logging.getLogger(__name__)

KEY_PREFIX = "receipt:"
QUEUED = "queued"
PUBLISHED = "published"
DEAD_LETTERED = "dead_lettered"
DUPLICATE = "duplicate"
UNROUTED = "unrouted"
DELIVERY_PREFIX = "d:"
DEAD_LETTER_PREFIX = "x:"

# KEYS: receipts. ARGV: ttl, then per key: n, then n field/value pairs. Sets the fields, (re)starts the TTL.
_UPDATE = """
local p = 2
for _, key in ipairs(KEYS) do
  local n = tonumber(ARGV[p])
  redis.call('HSET', key, unpack(ARGV, p + 1, p + 2 * n))
  redis.call('EXPIRE', key, ARGV[1])
  p = p + 1 + 2 * n
end
return #KEYS
"""

# KEYS: receipts. ARGV: ttl, n, n field/value pairs for every key. Only receipts that do not exist yet are
# written: a duplicate must never overwrite the receipt of an event that was accepted under that id.
_CREATE_ABSENT = """
local n = tonumber(ARGV[2])
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, unpack(ARGV, 3, 2 + 2 * n))
    redis.call('EXPIRE', key, ARGV[1])
  end
end
return #KEYS
"""


def enabled() -> bool:
    return bool(settings.INGEST_RECEIPTS)


def ttl() -> int:
    return max(1, int(settings.INGEST_DEDUP_TTL))


def key(event_id: Any) -> str:
    return KEY_PREFIX + str(event_id)


def admission_fields(*, owner: str, source: str, accepted_at: float) -> list[str]:
    """The field/value pairs every receipt of an admitted group starts with (flattened, as HSET takes them)."""
    return ["status", QUEUED, "owner", owner, "source", source, "accepted_at", repr(accepted_at)]


# ------------------------------------------------------------------------------------------------- writing


def stamp_queued(*, event_ids: Sequence[Any], owner: str, source: str, accepted_at: float) -> None:
    """Receipts for events about to be queued (admission in steps). Raises if Redis cannot take them, so the
    caller refuses the request as it would for the queue itself."""
    fields = admission_fields(owner=owner, source=source, accepted_at=accepted_at)
    _update({key(event_id): fields for event_id in event_ids}, client=get_redis())


def forget(*, event_ids: Sequence[Any]) -> None:
    """Remove receipts stamped for events that were not queued after all."""
    try:
        get_redis().delete(*(key(event_id) for event_id in event_ids))
    except Exception as exc:
        logger.warning("%d receipts of refused events left behind: %r", len(event_ids), exc)


def note_duplicates(*, duplicates: Sequence[tuple[str, str]], owner: str, source: str) -> None:
    """Receipts for duplicates sent under an event id of their own: (event id, the original's event id). A lost
    write only costs the producer the answer it already had in its POST's response."""
    by_original: dict[str, list[str]] = {}
    for event_id, original in duplicates:
        if event_id != original:
            by_original.setdefault(original, []).append(key(event_id))
    try:
        for original, keys in by_original.items():
            fields = ["status", DUPLICATE, "duplicate_of", original, "owner", owner, "source", source]
            script(_CREATE_ABSENT)(keys=keys, args=[ttl(), len(fields) // 2, *fields])
    except Exception as exc:
        logger.warning("receipts of %d duplicates not written: %r", len(duplicates), exc)


def note_deliveries(
    *,
    events: Sequence[Mapping[str, Any]],
    delivered: Iterable[tuple[int, str, tuple[int, int] | None]],
    finished: Iterable[int] = (),
    unrouted: Iterable[int] = (),
) -> None:
    """After a publish run: the acknowledged deliveries (event index, topic, (partition, offset) when known),
    the events with nothing left to deliver (published) and those no rule routed (unrouted)."""
    updates: dict[str, list[str]] = {}
    for index, topic, position in delivered:
        if position is not None:
            updates.setdefault(key(events[index]["event_id"]), []).extend(
                (DELIVERY_PREFIX + topic, f"{position[0]}:{position[1]}")
            )
    for status, indexes in ((PUBLISHED, finished), (UNROUTED, unrouted)):
        for index in indexes:
            updates.setdefault(key(events[index]["event_id"]), []).extend(("status", status))
    if updates:
        with writes() as pipe:
            _update(updates, client=pipe)


def note_dead_letters(*, dead_letters: Iterable[tuple[Any, str, int, str]]) -> None:
    """Dead letters stored: (event id, original topic, dead-letter id, reason)."""
    updates: dict[str, list[str]] = {}
    for event_id, topic, dead_letter_id, reason in dead_letters:
        updates.setdefault(key(event_id), []).extend((DEAD_LETTER_PREFIX + topic, f"{dead_letter_id}:{reason}"))
    if updates:
        with writes() as pipe:
            _update(updates, client=pipe)


def _update(updates: Mapping[str, list[str]], *, client: Any) -> None:
    args: list[Any] = [ttl()]
    for fields in updates.values():
        args.append(len(fields) // 2)
        args.extend(fields)
    if isinstance(client, Pipeline):
        # EVAL, not a registered script: redis-py checks a pipeline's scripts with a round trip of its own.
        client.eval(_UPDATE, len(updates), *updates, *args)
    else:
        script(_UPDATE)(keys=list(updates), args=args)


# ------------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Delivery:
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class DeadLetterNote:
    topic: str
    dead_letter_id: int
    reason: str


@dataclass(frozen=True)
class Receipt:
    event_id: str
    status: str
    owner: str
    source: str
    accepted_at: float | None
    deliveries: list[Delivery] = field(default_factory=list)
    dead_letters: list[DeadLetterNote] = field(default_factory=list)
    duplicate_of: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The producer's view (no owner)."""
        body: dict[str, Any] = {"event_id": self.event_id, "status": self.status}
        if self.status == DUPLICATE:
            body["duplicate_of"] = self.duplicate_of
        body["deliveries"] = [{"topic": d.topic, "partition": d.partition, "offset": d.offset} for d in self.deliveries]
        body["dead_letters"] = [
            {"dead_letter_id": d.dead_letter_id, "topic": d.topic, "reason": d.reason} for d in self.dead_letters
        ]
        return body


def read(*, event_id: str) -> Receipt | None:
    """The receipt of `event_id`, or None when there is none (unknown, expired, or receipts were off)."""
    raw = get_redis().hgetall(key(event_id))
    if not raw:
        return None
    fields = {_text(k): _text(v) for k, v in raw.items()}
    deliveries: list[Delivery] = []
    dead: list[DeadLetterNote] = []
    for name, value in fields.items():
        if name.startswith(DELIVERY_PREFIX):
            partition, _, offset = value.partition(":")
            deliveries.append(Delivery(name[len(DELIVERY_PREFIX) :], int(partition), int(offset)))
        elif name.startswith(DEAD_LETTER_PREFIX):
            dead_letter_id, _, reason = value.partition(":")
            dead.append(DeadLetterNote(name[len(DEAD_LETTER_PREFIX) :], int(dead_letter_id), reason))
    accepted_at = fields.get("accepted_at")
    return Receipt(
        event_id=event_id,
        # A dead letter outweighs whatever the publisher said of the event's other destinations.
        status=DEAD_LETTERED if dead else fields.get("status", QUEUED),
        owner=fields.get("owner", ""),
        source=fields.get("source", ""),
        accepted_at=float(accepted_at) if accepted_at else None,
        deliveries=sorted(deliveries, key=lambda d: d.topic),
        dead_letters=sorted(dead, key=lambda d: (d.topic, d.dead_letter_id)),
        duplicate_of=fields.get("duplicate_of"),
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
