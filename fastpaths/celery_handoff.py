"""Fast path `celery_handoff`: a publish task enqueued in one atomic Redis script, its message built by hand.

Replaces: `publish_events.apply_async(...)` plus the admission around it in three more Redis round trips (claim
dedup marks, reserve queue capacity, confirm the marks: ingestion.services._accept_in_steps, which runs when
this fast path is off or Celery's broker is not the project's Redis).
Why: `apply_async` is CPU-heavy (docs/performance.md, first round) and the three round trips come on top; with
single events that was most of the web tier's work per group. Here the task message is built directly — the same
JSON kombu's Redis transport writes for `apply_async` (Celery's task protocol 2, body compressed as
CELERY_TASK_COMPRESSION says, base64, kombu's Redis envelope with its delivery_info/delivery_tag;
tests/integration/test_handoff.py compares the two field by field) — and one Lua script checks the guard keys,
reserves capacity, sets the guards and pushes the message, or does none of it. Atomic, so there is no pending state
to confirm or release: if the script ran, the events are queued and their marks set; if it did not, nothing was.

Hand-built wire formats: Celery's protocol-2 headers and body (`[args, kwargs, embed]`), kombu's Redis message
envelope, and the list kombu's Redis transport reads (LPUSH onto the queue's name).

Upstream change that would let it go: a way to have kombu build (serialize) a message without sending it,
e.g. `Producer.prepare()` returning the bytes its transport would write, and Celery exposing
`amqp.as_task_v2()` + that as one public call.
"""

from __future__ import annotations

import base64
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import orjson
from kombu import compression

import fastpaths
from config.redis import script, script_then_wait
from publisher import queue, receipts

NAME = "celery_handoff"
VERIFIED = {"celery": "5.5.3", "kombu": "5.5.4"}


def enabled() -> bool:
    return fastpaths.gate(NAME, VERIFIED)


# The third part of a task body: no callbacks, errbacks, chain or chord (publish tasks never carry any).
NO_EMBEDDED_CALLS = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}

# KEYS: queued-events counter, Celery queue list, guard keys..., stamp hashes...   ARGV: count, limit, guard ttl,
# message, number of guards, stamps' expiry, stamp value, guard values..., then per stamp hash: n, n fields.
# Returns {0} when enqueued, {1, i, value, ...} for guards already held (nothing done), {2} when the queue has no
# room (nothing done). When enqueued, every stamp field is set to the stamp value.
_ENQUEUE_GUARDED = (
    queue.RESERVE_LUA
    + receipts.STAMP_LUA
    + """
local last_guard = 2 + tonumber(ARGV[5])
local held = {1}
-- MGET in slices (one command instead of one per guard; slices stay under Lua's unpack limit).
local first = 3
while first <= last_guard do
  local last = math.min(first + 999, last_guard)
  local found = redis.call('MGET', unpack(KEYS, first, last))
  for j = 1, #found do
    if found[j] then
      held[#held + 1] = first + j - 3
      held[#held + 1] = found[j]
    end
  end
  first = last + 1
end
if #held > 1 then
  return held
end
if not reserve(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])) then
  return {2}
end
for i = 3, last_guard do
  redis.call('SET', KEYS[i], ARGV[i + 5], 'EX', ARGV[3])
end
stamp(last_guard + 1, last_guard + 6, ARGV[7], ARGV[6])
redis.call('LPUSH', KEYS[2], ARGV[4])
return {0}
"""
)


@dataclass
class GuardedResult:
    enqueued: bool = False
    queue_full: bool = False
    held: dict[int, str] = field(default_factory=dict)  # position in `guards` -> value that already holds it
    replicas: int | None = None  # replicas that acknowledged the enqueue (when asked to wait for them)


@cache
def _origin() -> str:
    return f"gen{os.getpid()}@{socket.gethostname()}"


def task_message(
    *,
    task_name: str,
    queue_name: str,
    kwargs: dict[str, Any],
    kwargsrepr: str,
    headers: dict[str, Any] | None = None,
) -> bytes:
    """The message `apply_async(kwargs=..., argsrepr="", kwargsrepr=..., headers=...)` puts on a Redis queue."""
    from config.celery import app
    from fastpaths.celery_orjson import dumps

    task_id = str(uuid.uuid4())
    body = dumps([[], kwargs, NO_EMBEDDED_CALLS]).encode()
    extra_headers: dict[str, Any] = {}
    if app.conf.task_compression:
        body, extra_headers["compression"] = compression.compress(body, app.conf.task_compression)
    message = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task_name,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": "",
            "kwargsrepr": kwargsrepr,
            "origin": _origin(),
            "ignore_result": True,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        }
        | extra_headers
        | (headers or {}),
        "properties": {
            "correlation_id": task_id,
            "reply_to": app.thread_oid,
            "argsrepr": "",
            "kwargsrepr": kwargsrepr,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue_name},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return orjson.dumps(message)


def enqueue_guarded(
    *,
    message: bytes,
    queue_name: str,
    count: int,
    limit: int,
    guards: Sequence[tuple[str, str]],
    guard_ttl: int,
    min_replicas: int = 0,
    replica_wait: float = 0.0,
    stamps: Mapping[str, Sequence[str]] | None = None,
    stamp_value: str = "",
    stamp_expire_at: int = 0,
) -> GuardedResult:
    """Run the script; with `min_replicas`, then WAIT (same connection, same round trip) up to `replica_wait`
    seconds for that many replicas to hold its writes, and say in `replicas` how many did. Also, when enqueued:
    each field of `stamps` (hash -> fields) is set to `stamp_value`, and each hash expires at `stamp_expire_at`
    (the events' receipts, publisher.receipts)."""
    keys = [queue.QUEUED_EVENTS_KEY, queue_name, *(key for key, _ in guards), *(stamps or {})]
    args = [count, limit, guard_ttl, message, len(guards), stamp_expire_at, stamp_value]
    args += [value for _, value in guards]
    args += receipts.flatten(stamps or {})
    replicas = None
    if min_replicas > 0:
        reply, replicas = script_then_wait(
            _ENQUEUE_GUARDED, keys=keys, args=args, replicas=min_replicas, timeout=replica_wait
        )
    else:
        reply = script(_ENQUEUE_GUARDED)(keys=keys, args=args)
    code = int(reply[0])
    if code == 0:
        return GuardedResult(enqueued=True, replicas=replicas)
    if code == 2:
        return GuardedResult(queue_full=True)
    pairs = reply[1:]
    return GuardedResult(held={int(pairs[i]) - 1: _text(pairs[i + 1]) for i in range(0, len(pairs), 2)})


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
