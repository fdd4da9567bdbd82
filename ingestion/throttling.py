"""Per-key rate limits as a DRF throttle: a fixed-window counter in Redis, shared by every API process.

Each process leases a share of the window's allowance from Redis (one Lua script: take up to `lease` of what
is left) and grants requests from it locally, so most requests make no Redis round trip at all: a blocking
round trip per request was a large share of the web tier's CPU for single events (docs/performance.md, second
round). The sum of the leases never exceeds the limit, so the limit is never overshot, even across
processes; a process's unused lease lapses with its window, so a client may get up to (lease - 1) fewer per
process and window than the limit. Leases are 1/100 of the limit (between 1 and 100): a limit under 200 per
window is counted request by request, as before. Once Redis says the window is used up, the process refuses
locally until the window ends.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from functools import cache
from typing import Any

from django.conf import settings
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from config.env import parse_rate
from config.redis import script
from ingestion.auth import Client

logger = logging.getLogger(__name__)

# Take up to ARGV[1] of what is left of the window's limit ARGV[2]; returns what was taken (0: used up).
_LEASE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local lease = math.min(tonumber(ARGV[1]), tonumber(ARGV[2]) - used)
if lease <= 0 then
  return 0
end
redis.call('INCRBY', KEYS[1], lease)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return lease
"""


@dataclass
class _Allowance:
    window: int
    left: int = 0  # leased from Redis, not yet granted
    used_up: bool = False  # Redis has nothing left in this window


_allowances: dict[str, _Allowance] = {}
_lock = threading.Lock()


_rate = cache(parse_rate)  # INGEST_RATE_LIMIT is one string per process (tests override it): parsed once each


def lease_size(limit: int) -> int:
    return max(1, min(100, limit // 100))


def _take(key_id: str, window: int) -> bool | None:
    """Grant one request from this process's lease. None: the lease is empty, ask Redis."""
    with _lock:
        allowance = _allowances.get(key_id)
        if allowance is None or allowance.window != window:
            allowance = _allowances[key_id] = _Allowance(window)
        if allowance.left > 0:
            allowance.left -= 1
            return True
        return False if allowance.used_up else None


def _lease(key_id: str, window: int, *, limit: int, period: int) -> int:
    taken = int(script(_LEASE)(keys=[f"ingest:rate:{key_id}:{window}"], args=[lease_size(limit), limit, period + 1]))
    with _lock:
        allowance = _allowances.get(key_id)
        if allowance is not None and allowance.window == window:
            if taken == 0:
                allowance.used_up = True
            else:
                allowance.left += taken - 1  # one for the request that asked
    return taken


def refusal(client: Client) -> float | None:
    """None when the client may send one more request now (and it is counted), else the seconds until its window
    ends. Shared by the DRF throttle and the direct path of single events (ingestion.views)."""
    limit, period = _rate(settings.INGEST_RATE_LIMIT)
    now = time.time()
    window = int(now // period)
    granted = _take(client.key_id, window)
    if granted is None:
        try:
            granted = _lease(client.key_id, window, limit=limit, period=period) > 0
        except Exception:
            # Redis down: the enqueue will answer 503 anyway; a throttle lookup must not become a 500.
            logger.warning("rate limit check skipped: Redis unreachable")
            return None
    return None if granted else (window + 1) * period - now


class ApiKeyRateThrottle(BaseThrottle):
    def __init__(self) -> None:
        self._wait = 0.0

    def allow_request(self, request: Request, view: Any) -> bool:
        user = request.user
        if not isinstance(user, Client):
            return True
        wait = refusal(user)
        if wait is None:
            return True
        self._wait = wait
        return False

    def wait(self) -> float:
        return max(1.0, self._wait)
