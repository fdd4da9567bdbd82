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

And one gap closed: kombu takes a message off the queue (BRPOP) and only then records it as unacknowledged
(ZADD + HSET). If Redis dies between the two, the message exists only in this process, and Celery drops it
while it reconnects: an accepted batch lost (seen once in the Redis-kill fault test). Such a message is kept
here and pushed back onto its queue by the next channel that reaches Redis. If the bookkeeping did reach
Redis after all, the task runs twice; its task progress (publisher.progress) keeps Kafka from seeing it twice.

That last part is a correctness fix, not speed. With this fast path off (INGEST_FAST_PATHS without it, or
another kombu/redis version) it is lost: a message taken off the queue while Redis dies before kombu recorded it
as unacknowledged is dropped, so an accepted task can be lost on a Redis crash (rare: the window is one round
trip). The fault test that kills Redis requires this fast path.

Upstream change that would let it go: kombu taking a message and recording it as unacknowledged atomically
(BLMOVE into a per-consumer list, or a Lua script doing BRPOP + ZADD + HSET), plus one client per pool on the
publishing side and a binding-table cache; then kombu's own "redis" transport is all we need.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from kombu.transport import redis as kombu_redis

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


# Messages taken off a queue whose unacked bookkeeping failed: (raw message, exchange, routing key).
_orphans: list[tuple[dict[str, Any], str, str]] = []
_orphans_lock = threading.Lock()


class QoS(kombu_redis.QoS):
    def append(self, message: Any, delivery_tag: str) -> None:
        from fastpaths.celery_orjson import json_dumps

        delivery = message.delivery_info
        taken = (message._raw, delivery["exchange"], delivery["routing_key"])
        try:
            with self.pipe_or_acquire() as pipe:
                pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()}).hset(
                    self.unacked_key, delivery_tag, json_dumps(list(taken))
                ).execute()
        except Exception:
            with _orphans_lock:
                _orphans.append(taken)
            logger.warning("a message taken off the queue could not be recorded; it will be put back", exc_info=True)
            raise
        # kombu's own bookkeeping of delivered messages (virtual.QoS), skipping the Redis QoS we replace
        super(kombu_redis.QoS, self).append(message, delivery_tag)


class Channel(kombu_redis.Channel):
    QoS = QoS

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
