"""The circuit breaker every worker process shares (state in Redis, via pybreaker's Redis storage).

One failed publish round (a retryable error after the client's own retries) counts one failure; after
PUBLISHER_BREAKER_FAIL_MAX in a row the breaker opens, tasks are deferred instead of dead-lettered, and after
PUBLISHER_BREAKER_RESET_TIMEOUT one trial round runs half-open: success closes it, failure opens it again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pybreaker
from django.conf import settings

from config.redis import get_redis

logger = logging.getLogger(__name__)

NAMESPACE = "publisher"
T = TypeVar("T")
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


_CACHE_SECONDS = 1.0
_cached: tuple[float, str, int] = (0.0, pybreaker.STATE_CLOSED, 0)


def _snapshot() -> tuple[str, int]:
    """(state, consecutive failures) as Redis has them, re-read at most once a second per process."""
    global _cached
    now = time.monotonic()
    if now - _cached[0] < _CACHE_SECONDS:
        return _cached[1], _cached[2]
    breaker = get_breaker()
    try:
        state = str(breaker.current_state)
        failures = int(breaker.fail_counter)
    except Exception:
        state, failures = pybreaker.STATE_CLOSED, 0
    _cached = (now, state, failures)
    return state, failures


def _forget() -> None:
    global _cached
    _cached = (0.0, pybreaker.STATE_CLOSED, 0)


def guarded(func: Callable[..., T], *args: Any) -> T:
    """Run one publish round under the breaker. While it is closed and nothing failed lately, the round runs
    without touching Redis (pybreaker's storage costs several round trips per call); failures, and every
    call while it is open or half-open, go through pybreaker so all processes share the count and the state."""
    state, failures = _snapshot()
    if state != pybreaker.STATE_CLOSED:
        _forget()
        return get_breaker().call(func, *args)
    try:
        result = func(*args)
    except BaseException as exc:
        _record_failure(exc)
        raise
    if failures:
        # Consecutive failures: a success starts the count again. Told through pybreaker's public call() (a
        # no-op that succeeds, in the closed state: it resets the shared counter and tells the listeners).
        get_breaker().call(_succeed)
        _forget()
    return result


def _succeed() -> None:
    return None


def _record_failure(exc: BaseException) -> None:
    def _fail() -> None:
        raise exc

    with contextlib.suppress(BaseException):  # the caller re-raises the original error
        get_breaker().call(_fail)
    _forget()


def current_state() -> str:
    """closed | open | half-open, as all processes see it."""
    try:
        return str(get_breaker().current_state)
    except Exception:
        return "unknown"


def force_open() -> None:
    """Open the breaker on purpose (the dead-letter flood guard uses this)."""
    get_breaker().open()
    _forget()


def reset() -> None:
    breaker = get_breaker()
    breaker.close()
    _forget()
