"""The circuit breaker every worker process shares (state in Redis, via pybreaker's Redis storage).

One failed publish round (a retryable error after the client's own retries) counts one failure; after
PUBLISHER_BREAKER_FAIL_MAX in a row the breaker opens, tasks are deferred instead of dead-lettered, and after
PUBLISHER_BREAKER_RESET_TIMEOUT one trial round runs half-open: success closes it, failure opens it again.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import pybreaker
from django.conf import settings

from config.redis import get_redis

logger = logging.getLogger(__name__)

NAMESPACE = "publisher"
STATE_VALUES = {pybreaker.STATE_CLOSED: 0, pybreaker.STATE_HALF_OPEN: 1, pybreaker.STATE_OPEN: 2}

_breaker: pybreaker.CircuitBreaker | None = None
_pid: int | None = None
_lock = threading.Lock()


class _TransitionLogger(pybreaker.CircuitBreakerListener):
    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        logger.warning(
            "circuit breaker %s -> %s",
            getattr(old_state, "name", old_state),
            new_state.name,
            extra={"event": "breaker_transition", "from": getattr(old_state, "name", None), "to": new_state.name},
        )


def get_breaker() -> pybreaker.CircuitBreaker:
    global _breaker, _pid
    if _breaker is None or _pid != os.getpid():
        with _lock:
            if _breaker is None or _pid != os.getpid():
                try:
                    storage: pybreaker.CircuitBreakerStorage = pybreaker.CircuitRedisStorage(
                        pybreaker.STATE_CLOSED, get_redis(), namespace=NAMESPACE
                    )
                except Exception:
                    # Redis down: a local breaker still protects this process; the shared one returns with Redis.
                    logger.warning("circuit breaker: Redis unreachable, using a process-local breaker")
                    storage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
                _breaker = pybreaker.CircuitBreaker(
                    fail_max=settings.PUBLISHER_BREAKER_FAIL_MAX,
                    reset_timeout=settings.PUBLISHER_BREAKER_RESET_TIMEOUT,
                    state_storage=storage,
                    name="kafka-publish",
                    listeners=[_TransitionLogger()],
                    # Keep the real error (with the round's results) when the breaker trips during a call.
                    throw_new_error_on_trip=False,
                )
                _pid = os.getpid()
    return _breaker


def current_state() -> str:
    """closed | open | half-open, as all processes see it."""
    try:
        return str(get_breaker().current_state)
    except Exception:
        return "unknown"


def force_open() -> None:
    """Open the breaker on purpose (the dead-letter flood guard uses this)."""
    get_breaker().open()


def reset() -> None:
    breaker = get_breaker()
    breaker.close()
