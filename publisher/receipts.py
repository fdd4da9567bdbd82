"""Receipts: what became of each accepted event, for its producer (`GET /api/v1/events/<id>`) and for the admin's
Trace an event screen.

One Redis string per event, `receipt:<event_id>`, kept INGEST_DEDUP_TTL (so a producer can ask about an event as
long as it may send it again). A string, not a hash, and only appended to: one command per event at each step
(a hash plus its EXPIRE took two, and more memory). Its text is a header and then tokens, each `|`-prefixed:
- at admission, in the same atomic step that queues its task (or just before the task, when admitting in
  steps): `<owner>:<accepted_at ms>` (owner: the API key's prefix; no token yet: queued);
- by the worker once Kafka acknowledged: `|d:<topic>:<partition>:<offset>` per delivery, then `|p` (published:
  nothing left to deliver) or `|u` (unrouted: no rule matched);
- by the dead-letter writer: `|x:<topic>:<dead-letter id>:<reason>` (any one makes the event dead-lettered);
- for a duplicate sent under an event id of its own (only if that id has no receipt): `|=<the original's id>`;
- on the original, when another API key was answered `duplicate` of it: `|r:<that key's prefix>` (it may read
  the receipt too: it was told the id, and sent the same event).
Topic names, owners and reasons hold no `|` or `:` (Kafka allows letters, digits, `.`, `_`, `-` in names).

Receipts are a view, not the record (Kafka and the dead-letter table are): the worker's writes travel with the
task's other deferred Redis writes, and a lost one leaves a receipt behind, never an event.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from config.redis import get_redis, script, writes

logger = logging.getLogger(__name__)

KEY_PREFIX = "receipt:"
QUEUED = "queued"
PUBLISHED = "published"
DEAD_LETTERED = "dead_lettered"
DUPLICATE = "duplicate"
UNROUTED = "unrouted"

# KEYS: receipts. ARGV: ttl, then one text per key, appended. Read and written whole, not APPENDed: APPEND
# leaves the string with room to grow, about 60 % more memory per receipt. A receipt that did not exist
# (expired while its event waited, or queued before receipts were on) gets a TTL instead of living forever.
_APPEND = """
for i, key in ipairs(KEYS) do
  local old = redis.call('GET', key)
  if old then
    redis.call('SET', key, old .. ARGV[i + 1], 'KEEPTTL')
  else
    redis.call('SET', key, ARGV[i + 1], 'EX', ARGV[1])
  end
end
return #KEYS
"""

# KEYS: receipts. ARGV: ttl, value. Every key set to the value, with the TTL.
_STAMP = """
for _, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[2], 'EX', ARGV[1])
end
return #KEYS
"""


# KEYS: (receipt of the duplicate, receipt of its original) pairs. ARGV: ttl, owner, header, originals' ids.
_DUPLICATES = """
local reader = '|r:' .. ARGV[2]
for i = 1, #KEYS, 2 do
  if KEYS[i] ~= KEYS[i + 1] then
    redis.call('SET', KEYS[i], ARGV[3] .. '|=' .. ARGV[3 + (i + 1) / 2], 'NX', 'EX', ARGV[1])
  end
  local text = redis.call('GET', KEYS[i + 1])
  if text and string.sub(text, 1, #ARGV[2] + 1) ~= ARGV[2] .. ':'
      and not string.find(text .. '|', reader .. '|', 1, true) then
    redis.call('SET', KEYS[i + 1], text .. reader, 'KEEPTTL')
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


def admission_value(*, owner: str, accepted_at: float) -> str:
    """What every receipt of an admitted group starts as (queued)."""
    return f"{owner}:{int(accepted_at * 1000)}"


# ------------------------------------------------------------------------------------------------- writing


def stamp_queued(*, event_ids: Sequence[Any], owner: str, accepted_at: float) -> None:
    """Receipts for events about to be queued (admission in steps). Raises if Redis cannot take them, so the
    caller refuses the request as it would for the queue itself."""
    value = admission_value(owner=owner, accepted_at=accepted_at)
    script(_STAMP)(keys=[key(event_id) for event_id in event_ids], args=[ttl(), value])


def forget(*, event_ids: Sequence[Any]) -> None:
    """Remove receipts stamped for events that were not queued after all."""
    try:
        get_redis().delete(*(key(event_id) for event_id in event_ids))
    except Exception as exc:
        logger.warning("%d receipts of refused events left behind: %r", len(event_ids), exc)


def note_duplicates(*, duplicates: Sequence[tuple[str, str]], owner: str, accepted_at: float) -> None:
    """Duplicates answered to the API key `owner`: (event id sent, the original's event id). One sent under an id
    of its own gets a receipt naming the original (never over an existing receipt: that id's own event), and
    the original's receipt lets `owner` read it. A lost write only costs the producer what its POST's answer
    already said."""
    if not owner:
        return  # no API key: no one could read them
    try:
        keys = [receipt for event_id, original in duplicates for receipt in (key(event_id), key(original))]
        header = admission_value(owner=owner, accepted_at=accepted_at)
        script(_DUPLICATES)(keys=keys, args=[ttl(), owner, header, *(original for _, original in duplicates)])
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
    texts: dict[int, str] = {}
    for index, topic, position in delivered:
        if position is not None:
            texts[index] = texts.get(index, "") + f"|d:{topic}:{position[0]}:{position[1]}"
    for token, indexes in (("|p", finished), ("|u", unrouted)):
        for index in indexes:
            texts[index] = texts.get(index, "") + token
    if texts:
        _append({key(events[index]["event_id"]): text for index, text in texts.items()})


def note_dead_letters(*, dead_letters: Iterable[tuple[Any, str, int, str]]) -> None:
    """Dead letters stored: (event id, original topic, dead-letter id, reason)."""
    texts: dict[str, str] = {}
    for event_id, topic, dead_letter_id, reason in dead_letters:
        receipt = key(event_id)
        texts[receipt] = texts.get(receipt, "") + f"|x:{topic}:{dead_letter_id}:{reason}"
    if texts:
        _append(texts)


def _append(texts: Mapping[str, str]) -> None:
    with writes() as pipe:
        # EVAL, not a registered script: redis-py checks a pipeline's scripts with a round trip of its own.
        pipe.eval(_APPEND, len(texts), *texts, ttl(), *texts.values())


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
    accepted_at: float | None
    deliveries: list[Delivery] = field(default_factory=list)
    dead_letters: list[DeadLetterNote] = field(default_factory=list)
    duplicate_of: str | None = None
    readers: frozenset[str] = frozenset()  # other API keys (prefixes) answered `duplicate` of this event

    def readable_by(self, owner: str) -> bool:
        return bool(owner) and (owner == self.owner or owner in self.readers)

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
    raw = get_redis().get(key(event_id))
    if not raw:
        return None
    return parse(event_id=event_id, text=raw.decode() if isinstance(raw, bytes) else str(raw))


def parse(*, event_id: str, text: str) -> Receipt:
    header, *tokens = text.split("|")
    owner, _, accepted_ms = header.partition(":")
    deliveries: dict[str, Delivery] = {}  # a redelivered task may note a topic again: the last word counts
    dead: dict[tuple[str, int], DeadLetterNote] = {}
    flags: set[str] = set()
    readers: set[str] = set()
    duplicate_of = None
    for token in tokens:
        kind, _, rest = token.partition(":")
        if kind == "d":
            topic, partition, offset = rest.split(":")
            deliveries[topic] = Delivery(topic, int(partition), int(offset))
        elif kind == "x":
            topic, dead_letter_id, reason = rest.split(":")
            dead[(topic, int(dead_letter_id))] = DeadLetterNote(topic, int(dead_letter_id), reason)
        elif kind == "r":
            readers.add(rest)
        elif token.startswith("="):
            duplicate_of = token[1:]
        else:
            flags.add(token)
    if dead:
        status = DEAD_LETTERED  # outweighs whatever was said of the event's other destinations
    elif duplicate_of is not None:
        status = DUPLICATE
    elif "u" in flags:
        status = UNROUTED
    elif "p" in flags:
        status = PUBLISHED
    else:
        status = QUEUED
    return Receipt(
        event_id=event_id,
        status=status,
        owner=owner,
        accepted_at=int(accepted_ms) / 1000 if accepted_ms.isdigit() else None,
        deliveries=sorted(deliveries.values(), key=lambda d: d.topic),
        dead_letters=sorted(dead.values(), key=lambda d: (d.topic, d.dead_letter_id)),
        duplicate_of=duplicate_of,
        readers=frozenset(readers),
    )
