"""Fast path `kombu_redis_transport`: kombu's Redis transport without three costs it pays per task, and with one
gap closed (`CELERY_BROKER_TRANSPORT`, settings: this Transport when on, kombu's own "redis" when off).

Replaces: kombu's `kombu.transport.redis.Transport` (and its `SentinelTransport`, for sentinel:// brokers) as it is.
Non-public parts used (kombu 5.5): the channel's `_create_client`, `_queue_bind`, `_delete`, `_do_restore_message`,
`get_table`, `pipe_or_acquire`, `conn_or_acquire`, and the QoS's `unacked_key`/`unacked_index_key` bookkeeping
layout and `message._raw`.

For each command on the publishing side kombu builds a new `redis.Redis` client (copying ~160 response
callbacks), and before each publish it reads the exchange's binding table from Redis (SMEMBERS): two clients
and an extra round trip per enqueued task, a large part of the CPU of `apply_async`. This channel keeps one
client per connection pool, as kombu already does for its consuming client, and remembers a binding table for
a second (bindings change only when a queue is declared or deleted, which clears this channel's copy).

On the consuming side, every message the worker takes is copied into the "unacked" hash (so a dead worker's
tasks come back) through the standard library's JSON encoder with kombu's hooks: slow for a batch task, and
paid in the worker's one main process. This QoS writes the same JSON through orjson.

And two gaps closed, both where kombu takes a message off the queue (BRPOP) and only then records it as
unacknowledged (ZADD + HSET), so that for a moment the message exists only in the worker's main process:
- Redis dies between the two: Celery drops the message while it reconnects (seen once in the Redis-kill fault
  test). Such a message is kept here and pushed back onto its queue by the next channel that reaches Redis.
- The worker's main process dies (SIGKILL, OOM killer, a lost node) between the two, or while its BRPOP is
  answered to a connection the kernel has already closed: the message is gone (seen in every run of the
  two-node fault test). Here the worker takes messages with BLMOVE into an in-flight list of its own, and the
  same MULTI that records a message as unacknowledged removes it from that list. A worker keeps a liveness key
  while it runs; every worker, every 10 s, moves the in-flight lists of workers whose key has expired back
  onto their queues (one Lua script). A single queue with one priority step is consumed this way (the publish
  worker's case); anything else takes kombu's BRPOP.
If the bookkeeping did reach Redis after all, the task runs twice; its task progress (publisher.progress) keeps
Kafka from seeing it twice.

That part is a correctness fix, not speed. With this fast path off (INGEST_FAST_PATHS without it, or another
kombu/redis version) both gaps are open: a task taken off the queue by a worker killed in that moment, or while
Redis dies, is lost. The fault tests that kill Redis or a whole worker require this fast path.

Upstream change that would let it go: kombu taking a message and recording it as unacknowledged atomically
(BLMOVE into a per-consumer list, as here, or Redis streams with consumer groups), plus one client per pool on the
publishing side and a binding-table cache; then kombu's own "redis" transport is all we need.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

import fastpaths

NAME = "kombu_redis_transport"
VERIFIED = {"kombu": "5.5.4", "redis": "5.2.1"}
TRANSPORT = "fastpaths.kombu_redis_transport:Transport"

logger = logging.getLogger(__name__)

BINDINGS_CACHE_SECONDS = 1.0


def enabled() -> bool:
    return fastpaths.gate(NAME, VERIFIED)


SENTINEL_TRANSPORT = "fastpaths.kombu_redis_transport:SentinelTransport"


def transport_for(broker_url: str) -> str | None:
    """CELERY_BROKER_TRANSPORT for this broker: this module's Transport for redis://, its SentinelTransport for
    sentinel:// when on, else None (kombu's own transport for the URL's scheme)."""
    if not enabled():
        return None
    if broker_url.startswith("redis://"):
        return TRANSPORT
    return SENTINEL_TRANSPORT if broker_url.startswith("sentinel://") else None


# In-flight lists: the hash lists every worker's (list -> its queue); a list's owner keeps `<list>:alive`.
INFLIGHT_REGISTRY = "_kombu.inflight"
ALIVE_SECONDS = 30
ALIVE_REFRESH_SECONDS = 10

# Moves the in-flight lists of workers whose liveness key expired back onto their queues, oldest first, at the
# end BRPOP/BLMOVE take from next (as kombu's own restore does). Returns how many messages it moved.
RESTORE_DEAD_INFLIGHT_LUA = """
local moved = 0
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local list, queue = entries[i], entries[i + 1]
  if redis.call('EXISTS', list .. ':alive') == 0 then
    while redis.call('LMOVE', list, queue, 'RIGHT', 'RIGHT') do
      moved = moved + 1
    end
    redis.call('HDEL', KEYS[1], list)
  end
end
return moved
"""

# Messages taken off a queue whose unacked bookkeeping failed: (raw message, exchange, routing key).
_orphans: list[tuple[dict[str, Any], str, str]] = []
_orphans_lock = threading.Lock()


class QoS(kombu_redis.QoS):
    def append(self, message: Any, delivery_tag: str) -> None:
        from fastpaths.celery_orjson import json_dumps

        delivery = message.delivery_info
        taken = (message._raw, delivery["exchange"], delivery["routing_key"])
        inflight = self.channel.__dict__.pop("_inflight_item", None)
        try:
            with self.pipe_or_acquire() as pipe:
                pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()}).hset(
                    self.unacked_key, delivery_tag, json_dumps(list(taken))
                )
                if inflight is not None:
                    pipe.lrem(inflight[0], 1, inflight[1])  # in the same MULTI: recorded, or still in flight
                pipe.execute()
        except Exception:
            with _orphans_lock:
                _orphans.append(taken)
            logger.warning("a message taken off the queue could not be recorded; it will be put back", exc_info=True)
            raise
        # kombu's own bookkeeping of delivered messages (virtual.QoS), skipping the Redis QoS we replace
        super(kombu_redis.QoS, self).append(message, delivery_tag)

    def restore_visible(self, *args: Any, **kwargs: Any) -> Any:
        """kombu's restore of messages unacknowledged past the visibility timeout (every tenth call), and on
        every call (every 10 s) the in-flight lists of workers that died."""
        self.channel.restore_dead_inflight()
        return super().restore_visible(*args, **kwargs)


class Channel(kombu_redis.Channel):
    QoS = QoS
    # One list per queue, so that one BLMOVE can take from it (the project sends no task priorities).
    priority_steps = [0]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # kombu pings Redis here: it is reachable if we get past this
        self.restore_orphans()

    def restore_orphans(self) -> int:
        """Push messages this process took but could not record back onto their queues (at the end BRPOP
        takes from next, as kombu's own restore does). Returns how many; any left stay for the next channel."""
        with _orphans_lock:
            pending = list(_orphans)
            if not pending:
                return 0
            try:
                with self.conn_or_acquire() as client:
                    pipe = client.pipeline()
                    for raw, exchange, routing_key in pending:
                        self._do_restore_message(raw, exchange, routing_key, pipe, leftmost=False)
                    pipe.execute()
            except Exception:
                logger.warning("could not put back %d messages yet", len(pending), exc_info=True)
                return 0
            del _orphans[: len(pending)]
        logger.warning("put back %d messages taken off the queue before Redis went away", len(pending))
        return len(pending)

    def _inflight_list(self) -> str:
        name = self.__dict__.get("_inflight_name")
        if name is None:
            owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            name = self.__dict__["_inflight_name"] = f"{INFLIGHT_REGISTRY}.{owner}"
        return name

    def _keep_alive(self, queue: str) -> None:
        """Register this worker's in-flight list for `queue` and refresh its liveness key (every 10 s)."""
        now = time.monotonic()
        if self.__dict__.get("_alive_until", 0.0) > now:
            return
        name = self._inflight_list()
        with self.conn_or_acquire() as client:
            client.pipeline().hset(INFLIGHT_REGISTRY, name, queue).set(f"{name}:alive", 1, ex=ALIVE_SECONDS).execute()
        self.__dict__["_alive_until"] = now + ALIVE_REFRESH_SECONDS

    def restore_dead_inflight(self) -> int:
        """Put back what dead workers had taken but not recorded. Returns how many messages; never raises."""
        try:
            with self.conn_or_acquire() as client:
                moved = int(client.eval(RESTORE_DEAD_INFLIGHT_LUA, 1, INFLIGHT_REGISTRY))
        except Exception:
            logger.warning("could not look for messages of dead workers", exc_info=True)
            return 0
        if moved:
            logger.warning("put back %d messages a dead worker had taken off the queue", moved)
        return moved

    def _brpop_start(self, timeout: int = 1) -> None:
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
        if len(keys) != 1 or self.global_keyprefix:
            self.__dict__["_taking_from"] = None
            return super()._brpop_start(timeout)
        self._keep_alive(keys[0])
        self.__dict__["_taking_from"] = keys[0]
        self._in_poll = self.client.connection
        self.client.connection.send_command("BLMOVE", keys[0], self._inflight_list(), "RIGHT", "LEFT", timeout or 0)

    def _brpop_read(self, **options: Any) -> Any:
        source = self.__dict__.pop("_taking_from", None)
        if source is None:
            return super()._brpop_read(**options)
        try:
            try:
                item = self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                self.client.connection.disconnect()  # as kombu does: the next poll reconnects
                raise
            if not item:
                raise Empty()
            self._queue_cycle.rotate(source)
            # QoS.append removes it from the in-flight list in the MULTI that records it as unacknowledged.
            inflight = self.__dict__["_inflight_item"] = (self._inflight_list(), item)
            try:
                self.connection._deliver(loads(bytes_to_str(item)), source)
            except BaseException:
                if self.__dict__.pop("_inflight_item", None) is not None:  # never recorded: back to its queue
                    self._settle_inflight(inflight, requeue_to=source)
                raise
            if self.__dict__.pop("_inflight_item", None) is not None:  # taken without acknowledgement (no_ack)
                self._settle_inflight(inflight, requeue_to=None)
            return True
        finally:
            self._in_poll = None

    def _settle_inflight(self, inflight: tuple[str, bytes], *, requeue_to: str | None) -> None:
        """Take a message out of this worker's in-flight list, and put it back on its queue when asked."""
        name, item = inflight
        with self.conn_or_acquire() as client:
            pipe = client.pipeline().lrem(name, 1, item)
            if requeue_to is not None:
                pipe.rpush(requeue_to, item)
            pipe.execute()

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool  # kombu replaces the pool after a disconnect: the client must follow it
        client = self.__dict__.get("_publishing_client")
        if client is None or client.connection_pool is not pool:
            client = self.__dict__["_publishing_client"] = super()._create_client()
        return client

    def get_table(self, exchange: str) -> Any:
        tables: dict[str, tuple[float, Any]] = self.__dict__.setdefault("_binding_tables", {})
        now = time.monotonic()
        cached = tables.get(exchange)
        if cached is not None and cached[0] > now:
            return cached[1]
        table = super().get_table(exchange)
        if table:  # an empty table means "no route": ask again next time rather than remember it
            tables[exchange] = (now + BINDINGS_CACHE_SECONDS, table)
        return table

    def _queue_bind(self, *args: Any, **kwargs: Any) -> Any:
        self.__dict__.pop("_binding_tables", None)
        return super()._queue_bind(*args, **kwargs)

    def _delete(self, *args: Any, **kwargs: Any) -> Any:
        self.__dict__.pop("_binding_tables", None)
        return super()._delete(*args, **kwargs)


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """The same channel on kombu's Sentinel transport (its pool asks the Sentinels for the primary): the gap closed
    above matters most there, since a failover is exactly Redis dying under a worker."""


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel
