"""One lazily created Redis client per process (connection pool inside), shared by the apps."""

from __future__ import annotations

import os
import threading

import redis
from django.conf import settings

_client: redis.Redis | None = None
_pid: int | None = None
_lock = threading.Lock()


def get_redis() -> redis.Redis:
    global _client, _pid
    if _client is None or _pid != os.getpid():
        with _lock:
            if _client is None or _pid != os.getpid():
                _client = redis.Redis.from_url(
                    settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
                )
                _pid = os.getpid()
    return _client
