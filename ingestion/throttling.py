"""Per-key rate limits as a DRF throttle. A fixed-window counter in Redis (one pipelined INCR per request)
instead of DRF's SimpleRateThrottle, whose per-key timestamp list grows with the rate and is re-serialized
on every request; the window is shared by every API process."""

from __future__ import annotations

import logging
import time
from typing import Any

from django.conf import settings
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from config.env import parse_rate
from config.redis import get_redis
from ingestion.auth import Client

logger = logging.getLogger(__name__)


class ApiKeyRateThrottle(BaseThrottle):
    def __init__(self) -> None:
        self.limit, self.period = parse_rate(settings.INGEST_RATE_LIMIT)
        self._wait = 0.0

    def allow_request(self, request: Request, view: Any) -> bool:
        user = request.user
        if not isinstance(user, Client):
            return True
        now = time.time()
        window = int(now // self.period)
        key = f"ingest:rate:{user.key_id}:{window}"
        try:
            pipe = get_redis().pipeline(transaction=False)
            pipe.incr(key)
            pipe.expire(key, self.period + 1)
            count = int(pipe.execute()[0])
        except Exception:
            # Redis down: the enqueue will answer 503 anyway; a throttle lookup must not become a 500.
            logger.warning("rate limit check skipped: Redis unreachable")
            return True
        if count > self.limit:
            self._wait = (window + 1) * self.period - now
            return False
        return True

    def wait(self) -> float:
        return max(1.0, self._wait)
