"""Receipts: what became of each accepted event, for its producer (`GET /api/v1/events/<id>`) and for the admin's
Trace an event screen.

Kept in Redis hashes per time bucket and shard, `receipts:<bucket>:<shard>`, one field per event id: a bucket is
INGEST_DEDUP_TTL/192 seconds (at least 60) of writes, a shard one of 16 by the event id's CRC-32, and each hash
expires INGEST_DEDUP_TTL after its bucket ends (so a producer can ask about an event as long as it may send it
again). A hash per bucket, not a key per event: one HSET carries a whole task's events and Redis keeps no TTL per
event, which made receipts cost a sixth of batch throughput (docs/performance.md). Shards keep each hash small
enough to free without stalling Redis. A reader looks in every bucket of the TTL window (one pipelined HGET each)
and joins what it finds, oldest first.

A receipt's text is a header and then tokens, each `|`-prefixed, written to the bucket of the moment:
- at admission, in the same atomic step that queues its task (or just before the task, when admitting in
  steps): `<owner>:<accepted_at ms>` (owner: the API key's prefix; no token yet: queued);
- by the worker once Kafka acknowledged: `|d:<topic>:<partition>:<offset>` per delivery, then `|p` (published:
  nothing left to deliver) or `|u` (unrouted: no rule matched);
- by the dead-letter writer: `|x:<topic>:<dead-letter id>:<reason>` (any one makes the event dead-lettered);
- for a duplicate sent under an event id of its own (only if that id has no receipt in the bucket): a header and
  `|=<the original's id>`;
- on the original, when another API key was answered `duplicate` of it: `|r:<that key's prefix>` (it may read
  the receipt too: it was told the id, and sent the same event).
Tokens written in a later bucket than the header are a segment without a header; a header starts the receipt
afresh (the event id was accepted again), except a duplicate's note, which never hides an event's own receipt.
Tokens with no header at all (it expired first, or receipts were off at admission) are a receipt no API key may
read; the admin's trace still shows them.
Topic names, owners and reasons hold no `|` or `:` (Kafka allows letters, digits, `.`, `_`, `-` in names).

Receipts are a view, not the record (Kafka and the dead-letter table are): the worker's writes travel with the
task's other deferred Redis writes, and a lost one leaves a receipt behind, never an event.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from config.redis import get_redis, script, writes

logger = logging.getLogger(__name__)

KEY_PREFIX = "receipts:"
SHARDS = 16
MAX_BUCKETS = 192  # buckets a TTL spans, so at most this many (plus 3) HGETs per read
QUEUED = "queued"
PUBLISHED = "published"
DEAD_LETTERED = "dead_lettered"
DUPLICATE = "duplicate"
UNROUTED = "unrouted"

# KEYS: receipt hashes. ARGV: expiry (unix seconds), then per key: n, n event ids, n texts, each text appended to
# the event's field (HMGET then HSET: the value is stored whole, without the room APPEND leaves to grow). Both
# scripts here take fields 1,000 at a time: Lua's unpack takes at most ~8,000 values.
_APPEND = """
local a = 2
for _, key in ipairs(KEYS) do
  local n = tonumber(ARGV[a])
  for first = 1, n, 1000 do
    local last = math.min(first + 999, n)
    local old = redis.call('HMGET', key, unpack(ARGV, a + first, a + last))
    local kv = {}
    for j = first, last do
      kv[#kv + 1] = ARGV[a + j]
      kv[#kv + 1] = (old[j - first + 1] or '') .. ARGV[a + n + j]
    end
    redis.call('HSET', key, unpack(kv))
  end
  redis.call('EXPIREAT', key, ARGV[1])
  a = a + 2 * n + 1
end
return #KEYS
"""

# Lua that sets stamps, shared with the admission script (fastpaths.celery_handoff): KEYS[first_key..] are
# receipt hashes; ARGV[a] onwards is, per key, n and n event ids; each field is set to `value`, each hash
# expires at `expire_at`.
STAMP_LUA = """
local function stamp(first_key, a, value, expire_at)
  for k = first_key, #KEYS do
    local n = tonumber(ARGV[a])
    for first = 1, n, 1000 do
      local kv = {}
      for j = first, math.min(first + 999, n) do
        kv[#kv + 1] = ARGV[a + j]
        kv[#kv + 1] = value
      end
      redis.call('HSET', KEYS[k], unpack(kv))
    end
    redis.call('EXPIREAT', KEYS[k], expire_at)
    a = a + n + 1
  end
end
"""

# KEYS: receipt hashes. ARGV: expiry, value, then per key: n, n event ids.
_STAMP = (
    STAMP_LUA
    + """
stamp(1, 3, ARGV[2], ARGV[1])
return #KEYS
"""
)

# KEYS: (hash of the duplicate, hash of its original) pairs. ARGV: expiry, owner, header, then per pair the
# duplicate's id and the original's id.
_DUPLICATES = """
local reader = '|r:' .. ARGV[2]
for i = 1, #KEYS, 2 do
  local sent, original = ARGV[3 + i], ARGV[4 + i]
  if sent ~= original then
    redis.call('HSETNX', KEYS[i], sent, ARGV[3] .. '|=' .. original)
    redis.call('EXPIREAT', KEYS[i], ARGV[1])
  end
  local text = redis.call('HGET', KEYS[i + 1], original)
  if not (text and string.find(text .. '|', reader .. '|', 1, true)) then
    redis.call('HSET', KEYS[i + 1], original, (text or '') .. reader)
    redis.call('EXPIREAT', KEYS[i + 1], ARGV[1])
  end
end
return #KEYS
"""


def enabled() -> bool:
    return bool(settings.INGEST_RECEIPTS)


def ttl() -> int:
    return max(1, int(settings.INGEST_DEDUP_TTL))


def bucket_seconds() -> int:
    return max(60, -(-ttl() // MAX_BUCKETS))


def _bucket(at: float) -> int:
    return int(at) // bucket_seconds()


def _hash(bucket: int, event_id: str) -> str:
    return f"{KEY_PREFIX}{bucket}:{zlib.crc32(event_id.encode()) % SHARDS}"


def expire_at(at: float) -> int:
    """When the hashes written at `at` expire: INGEST_DEDUP_TTL after their bucket ends."""
    return (_bucket(at) + 1) * bucket_seconds() + ttl()


def by_hash(*, event_ids: Iterable[Any], at: float) -> dict[str, list[str]]:
    """The event ids (as text) grouped by the hash their receipts go to at `at`."""
    bucket = _bucket(at)
    groups: dict[str, list[str]] = {}
    for event_id in event_ids:
        text = str(event_id)
        groups.setdefault(_hash(bucket, text), []).append(text)
    return groups


def flatten(groups: Mapping[str, Sequence[str]]) -> list[Any]:
    """The ARGV tail STAMP_LUA reads: per hash, the count and the ids."""
    args: list[Any] = []
    for event_ids in groups.values():
        args.append(len(event_ids))
        args.extend(event_ids)
    return args


def admission_value(*, owner: str, accepted_at: float) -> str:
    """What every receipt of an admitted group starts as (queued)."""
    return f"{owner}:{int(accepted_at * 1000)}"


# ------------------------------------------------------------------------------------------------- writing


def stamp_queued(*, event_ids: Sequence[Any], owner: str, accepted_at: float) -> None:
    """Receipts for events about to be queued (admission in steps). Raises if Redis cannot take them, so the
    caller refuses the request as it would for the queue itself."""
    groups = by_hash(event_ids=event_ids, at=accepted_at)
    value = admission_value(owner=owner, accepted_at=accepted_at)
    script(_STAMP)(keys=list(groups), args=[expire_at(accepted_at), value, *flatten(groups)])


def forget(*, event_ids: Sequence[Any], accepted_at: float) -> None:
    """Remove receipts stamped (at `accepted_at`) for events that were not queued after all."""
    try:
        with get_redis().pipeline(transaction=False) as pipe:
            for receipts, ids in by_hash(event_ids=event_ids, at=accepted_at).items():
                pipe.hdel(receipts, *ids)
            pipe.execute()
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
        ids = [str(event_id) for pair in duplicates for event_id in pair]  # (sent, original) pairs, flat
        bucket = _bucket(accepted_at)
        keys = [_hash(bucket, event_id) for event_id in ids]
        header = admission_value(owner=owner, accepted_at=accepted_at)
        script(_DUPLICATES)(keys=keys, args=[expire_at(accepted_at), owner, header, *ids])
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
        _append({str(events[index]["event_id"]): text for index, text in texts.items()})


def note_dead_letters(*, dead_letters: Iterable[tuple[Any, str, int, str]]) -> None:
    """Dead letters stored: (event id, original topic, dead-letter id, reason)."""
    texts: dict[str, str] = {}
    for event_id, topic, dead_letter_id, reason in dead_letters:
        receipt = str(event_id)
        texts[receipt] = texts.get(receipt, "") + f"|x:{topic}:{dead_letter_id}:{reason}"
    if texts:
        _append(texts)


def _append(texts: Mapping[str, str]) -> None:
    """Append each text to its event's receipt (event id -> text), in the bucket of the moment."""
    now = time.time()
    groups = by_hash(event_ids=texts, at=now)
    args: list[Any] = [expire_at(now)]
    for event_ids in groups.values():
        args.append(len(event_ids))
        args.extend(event_ids)
        args.extend(texts[event_id] for event_id in event_ids)
    with writes() as pipe:
        # EVAL, not a registered script: redis-py checks a pipeline's scripts with a round trip of its own.
        pipe.eval(_APPEND, len(groups), *groups, *args)


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
    now = time.time()
    # Every bucket a live hash may be in, and one beyond now for a writer whose clock runs ahead.
    with get_redis().pipeline(transaction=False) as pipe:
        for bucket in range(_bucket(now - ttl()) - 1, _bucket(now) + 2):
            pipe.hget(_hash(bucket, event_id), event_id)
        found = pipe.execute()
    text = join([raw.decode() if isinstance(raw, bytes) else str(raw) for raw in found if raw])
    return None if text is None else parse(event_id=event_id, text=text)


def join(segments: Sequence[str]) -> str | None:
    """One receipt from what the buckets hold, oldest first: from the last segment that opens with a header
    (a duplicate's note only when no other header is there), with the header-less segments after it; without a
    header, the segments alone (a receipt no API key may read)."""
    start = None
    for position, segment in enumerate(segments):
        if not segment.startswith("|") and (start is None or "|=" not in segment):
            start = position
    if start is None:
        # Tokens whose header expired or was never written (receipts off at admission): what became of the event
        # still shows in the admin's trace, and no API key owns it.
        return "".join(segments) or None
    return segments[start] + "".join(segment for segment in segments[start + 1 :] if segment.startswith("|"))


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
