"""Where `apply_async` puts a publish task: the Redis list of its queue, when Celery's broker is the project's own
Redis database (REDIS_URL, or behind Sentinel the same Sentinels' primary and database). The admission uses it to
enqueue atomically (fast path `celery_handoff`) and the backlog check to count waiting tasks. With any other broker
(another Redis, another database, AMQP) `queue_for()` is None and callers use `apply_async` and skip the count."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from redis.connection import parse_url


def _redis_target(url: str) -> dict[str, Any] | None:
    """Where a redis:// URL points (host, port, database, credentials), as redis-py reads it."""
    if urlsplit(url).scheme != "redis":
        return None
    return {"host": "localhost", "port": 6379, "db": 0} | parse_url(url)


def _sentinel_target(url: str) -> dict[str, Any] | None:
    """The same for kombu's sentinel:// URL (Sentinels separated by `;`, each with the database and password):
    the set of Sentinels in place of host and port."""
    parts = [urlsplit(part) for part in url.split(";")]
    if any(part.scheme != "sentinel" for part in parts):
        return None
    target = _redis_target(parts[0]._replace(scheme="redis").geturl())
    assert target is not None
    target.pop("host"), target.pop("port")
    return target | {"sentinels": frozenset((part.hostname, part.port or 26379) for part in parts)}


def queue_for(task_name: str) -> str | None:
    """The Redis list `apply_async` would push this task to (Celery's routes: CELERY_TASK_ROUTES), or None
    when the message cannot be pushed here: the broker is not REDIS_URL's own Redis database, or the route
    is not a plain direct queue."""
    return _queue_for(task_name, settings.CELERY_BROKER_URL, settings.REDIS_URL, tuple(settings.REDIS_SENTINELS))


@cache
def _queue_for(task_name: str, broker_url: str, redis_url: str, sentinels: tuple[tuple[str, int], ...]) -> str | None:
    if not same_redis(broker_url, redis_url, sentinels=sentinels):
        return None
    from config.celery import app

    queue = app.amqp.router.route({}, task_name).get("queue")
    if queue is None or queue.exchange.type != "direct":
        return None
    return str(queue.name)  # Celery sends to a direct queue through the anonymous exchange, keyed by its name


def publish_queue_keys() -> tuple[str, str, str] | None:
    """Where the publish tasks are held in REDIS_URL's Redis: (the queue's list, kombu's hash of tasks taken by a
    worker and not yet acknowledged, the registry of the workers' in-flight lists of fast path
    kombu_redis_transport), or None when Celery's broker is elsewhere."""
    from fastpaths.kombu_redis_transport import INFLIGHT_REGISTRY
    from publisher.queue import PUBLISH_TASK

    queue_name = queue_for(PUBLISH_TASK)
    if queue_name is None:
        return None
    return queue_name, str(settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("unacked_key", "unacked")), INFLIGHT_REGISTRY


def same_redis(broker_url: str, redis_url: str, *, sentinels: Sequence[tuple[str, int]] = ()) -> bool:
    """Whether Celery's broker is REDIS_URL's own Redis database; behind Sentinel (`sentinels`, REDIS_SENTINELS),
    whether the broker is a sentinel:// URL for the same Sentinels and database (the master name is the same:
    settings give the broker REDIS_SENTINEL_MASTER)."""
    if sentinels:
        broker = _sentinel_target(broker_url)
        app = _redis_target(redis_url)
        if broker is None or app is None:
            return False
        app.pop("host"), app.pop("port")
        return broker == app | {"sentinels": frozenset(sentinels)}
    broker = _redis_target(broker_url)
    return broker is not None and broker == _redis_target(redis_url)
