"""Load shedding in the web tier: at most INGEST_WEB_ACTIVE_REQUESTS single-event requests and
INGEST_WEB_ACTIVE_BATCHES batches are worked on at once in a web process, and when they cannot keep up, the rest
are refused at once with `503` and `Retry-After` instead of waiting.

Why: granian hands requests to a pool of Python threads (WEB_THREADS) and queues the rest where the app cannot
see them. When the web tier itself is the bottleneck (single events offered at several times its capacity), that
queue grows for as long as the overload lasts and every request waits in it for seconds, while the admission
(ingestion.services, which watches the publish queue) has nothing to refuse. So the pool has more threads than
permits, and the queue in front of the permits is one the app sees (a gate per endpoint: a batch costs ~100 times
a single event, so fewer are let in at once, and each answer waits for fewer others' CPU):
- a request that finds a permit free takes it;
- otherwise it waits for one, at most INGEST_WEB_MAX_WAIT (the interval); a burst is absorbed so;
- when waits stay above half of it (the target) for a whole interval (CoDel's sign of a standing queue rather
  than a burst), or one wait runs out, the gate sheds: a request that finds no permit free is refused at once, so the
  spare threads empty granian's queue at the price of a refusal each, and the requests that are accepted wait
  for nothing. Each refusal keeps the gate shedding for another interval; an interval without one ends it.

Only the two event endpoints' POSTs pass the gate; the admin, health, metrics and receipts never wait on it.

A refused request's body is read (up to DRAIN_LIMIT bytes) before the 503 goes out: granian closes a connection
whose request body the app left unread, and a client that had already sent its next request on it sees the
connection dropped without an answer; under overload, a reconnect per refusal is work nobody needs.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson
from django.conf import settings

from events.schema import error_body
from ingestion import metrics, services
from ingestion.bodies import declared_length

DRAIN_LIMIT = 256 * 1024  # bytes: larger bodies (or chunked ones) are left unread and their connection closed


class Gate:
    """The permits and the shedding state of one web process (thread-safe)."""

    def __init__(
        self, *, permits: int, target: float, interval: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._free = permits
        self._target = target
        self._interval = interval
        self._clock = clock
        self._changed = threading.Condition(threading.Lock())
        self._shedding_until = 0.0
        self._above_since: float | None = None  # since when every wait has been above the target

    def enter(self) -> bool:
        """Take a permit (True), or refuse the request (False). A True must be followed by `leave()`."""
        with self._changed:
            if self._free > 0:
                self._free -= 1
                self._above_since = None  # no queue right now
                return True
            started = self._clock()
            if started < self._shedding_until:
                self._shedding_until = started + self._interval
                return False
            deadline = started + self._interval
            while self._free == 0:
                left = deadline - self._clock()
                if left <= 0 or not self._changed.wait(left):
                    if self._free > 0:
                        break
                    now = self._clock()
                    self._shedding_until = now + self._interval
                    return False
            self._free -= 1
            now = self._clock()
            if now - started <= self._target:
                self._above_since = None
            else:
                if self._above_since is None:
                    self._above_since = started
                if now - self._above_since >= self._interval:
                    self._shedding_until = now + self._interval
            return True

    def leave(self) -> None:
        with self._changed:
            self._free += 1
            self._changed.notify()

    def shedding(self) -> bool:
        with self._changed:
            return self._clock() < self._shedding_until


def refusal(*, retry_after: int) -> tuple[str, list[tuple[str, str]], bytes]:
    """The 503 a shed request gets: status line, headers, body (the API's error shape)."""
    body = orjson.dumps(
        error_body("The web tier is working at capacity and cannot answer this request in time; retry later.")
    )
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Retry-After", str(retry_after)),
    ]
    return "503 Service Unavailable", headers, body


def gated(app: Callable[..., Iterable[bytes]], *, event_path: str, batch_path: str) -> Callable[..., Iterable[bytes]]:
    """The web process's app with a gate for each event endpoint as the settings say, or `app` itself when both
    INGEST_WEB_ACTIVE_REQUESTS and INGEST_WEB_ACTIVE_BATCHES are 0."""
    limits = {
        (event_path, "event"): settings.INGEST_WEB_ACTIVE_REQUESTS,
        (batch_path, "batch"): settings.INGEST_WEB_ACTIVE_BATCHES,
    }
    gates = {
        path: Gate(permits=permits, target=settings.INGEST_WEB_MAX_WAIT / 2, interval=settings.INGEST_WEB_MAX_WAIT)
        for (path, _), permits in limits.items()
        if permits
    }
    if not gates:
        return app
    rejected = metrics.EVENTS_REJECTED.labels(reason="web_busy")
    durations = {path: metrics.REQUEST_DURATION.labels(endpoint=name, status="503") for path, name in limits}

    def count(path: str, seconds: float) -> None:
        rejected.inc()
        durations[path].observe(seconds)

    return wrap(app, gates=gates, retry_after=settings.INGEST_RETRY_AFTER_SECONDS, on_refusal=count)


def _drain(environ: dict[str, Any]) -> None:
    """Read and drop a declared body of at most DRAIN_LIMIT bytes, so the connection stays open for the next
    request; a body that cannot be read (the client gone) changes nothing."""
    length = declared_length(environ, at_most=DRAIN_LIMIT)
    stream = environ.get("wsgi.input")
    if length is None or stream is None:
        return
    with contextlib.suppress(Exception):  # the client gone: it gets no answer either way
        stream.read(length)


def wrap(
    app: Callable[..., Iterable[bytes]],
    *,
    gates: Mapping[str, Gate],
    retry_after: int,
    on_refusal: Callable[[str, float], None] = lambda path, seconds: None,
) -> Callable[..., Iterable[bytes]]:
    """The WSGI app with POSTs to each path of `gates` passed through its gate; `on_refusal(path, seconds
    waited)`."""
    status, headers, body = refusal(retry_after=retry_after)

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path: str = environ.get("PATH_INFO", "")
        gate = gates.get(path) if environ.get("REQUEST_METHOD") == "POST" else None
        if gate is None:
            return app(environ, start_response)
        started = time.monotonic()
        if not gate.enter():
            on_refusal(path, time.monotonic() - started)
            _drain(environ)
            start_response(status, headers)
            return [body]
        try:
            with services.request_arrived(at=started):  # the queue-delay bound counts the wait here too
                return app(environ, start_response)
        finally:
            gate.leave()

    return application
