"""kombu's Redis transport without three costs it pays per task (`CELERY_BROKER_TRANSPORT`, settings).

For each command on the publishing side kombu builds a new `redis.Redis` client (copying ~160 response
callbacks), and before each publish it reads the exchange's binding table from Redis (SMEMBERS): two clients
and an extra round trip per enqueued task, about half of the CPU of `apply_async`. This channel keeps one
client per connection pool, as kombu already does for its consuming client, and remembers a binding table for
a second (bindings change only when a queue is declared or deleted, which clears this channel's copy).

On the consuming side, every message the worker takes is copied into the "unacked" hash (so a dead worker's
tasks come back) through the standard library's JSON encoder with kombu's hooks: ~140 us for a task of 100
events, in the worker's one main process. This QoS writes the same JSON through orjson.
"""

from __future__ import annotations

import time
from typing import Any

from kombu.transport import redis as kombu_redis

BINDINGS_CACHE_SECONDS = 1.0


class QoS(kombu_redis.QoS):
    def append(self, message: Any, delivery_tag: str) -> None:
        from config.celery import json_dumps

        delivery = message.delivery_info
        entry = json_dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()}).hset(
                self.unacked_key, delivery_tag, entry
            ).execute()
            # kombu's own bookkeeping of delivered messages (virtual.QoS), skipping the Redis QoS we replace
            super(kombu_redis.QoS, self).append(message, delivery_tag)


class Channel(kombu_redis.Channel):
    QoS = QoS

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
