"""Where `apply_async` puts a publish task: the Redis list of its queue, when Celery's broker is the project's
own Redis database (REDIS_URL). The admission uses it to enqueue atomically (fast path `celery_handoff`) and
the backlog check to count waiting tasks. With any other broker (another Redis, another database, AMQP)
`queue_for()` is None and callers use `apply_async` and skip the count.
"""

from __future__ import annotations

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


def queue_for(task_name: str) -> str | None:
    """The Redis list `apply_async` would push this task to (Celery's routes: CELERY_TASK_ROUTES), or None
    when the message cannot be pushed here: the broker is not REDIS_URL's own Redis database, or the route
    is not a plain direct queue."""
    return _queue_for(task_name, settings.CELERY_BROKER_URL, settings.REDIS_URL)


@cache
def _queue_for(task_name: str, broker_url: str, redis_url: str) -> str | None:
    if not same_redis(broker_url, redis_url):
        return None
    from config.celery import app

    queue = app.amqp.router.route({}, task_name).get("queue")
    if queue is None or queue.exchange.type != "direct":
        return None
    return str(queue.name)  # Celery sends to a direct queue through the anonymous exchange, keyed by its name


def same_redis(broker_url: str, redis_url: str) -> bool:
    broker = _redis_target(broker_url)
    return broker is not None and broker == _redis_target(redis_url)
