"""The web tier's load-shedding gate (ingestion.shedding.Gate): when it waits, when it refuses, when it stops."""

from __future__ import annotations

import io
import threading
import time

from ingestion import services
from ingestion.shedding import DRAIN_LIMIT, Gate, wrap


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_requests_within_the_permits_never_wait_or_get_refused() -> None:
    gate = Gate(permits=2, target=0.05, interval=0.1, clock=Clock())
    assert gate.enter() and gate.enter()
    gate.leave()
    assert gate.enter()
    assert not gate.shedding()


def test_a_wait_that_runs_out_refuses_and_starts_shedding() -> None:
    gate = Gate(permits=1, target=0.01, interval=0.05)
    assert gate.enter()
    started = time.monotonic()
    assert not gate.enter()  # no permit within the interval
    assert time.monotonic() - started >= 0.05
    assert gate.shedding()
    # While shedding, a request that finds no permit is refused at once.
    started = time.monotonic()
    assert not gate.enter()
    assert time.monotonic() - started < 0.04
    # One that finds a permit free still gets it.
    gate.leave()
    assert gate.enter()


def test_shedding_ends_after_an_interval_without_refusals() -> None:
    clock = Clock()
    gate = Gate(permits=1, target=0.01, interval=0.1, clock=clock)
    gate._shedding_until = clock.now + 0.1  # as a refusal leaves it
    assert gate.enter()
    assert not gate.enter()  # refused, and shedding extended by an interval from now
    clock.now += 0.09
    assert gate.shedding()
    clock.now += 0.02
    assert not gate.shedding()


def test_a_burst_waits_for_a_permit_instead_of_being_refused() -> None:
    gate = Gate(permits=1, target=0.05, interval=0.5)
    assert gate.enter()
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(gate.enter()))
    waiter.start()
    time.sleep(0.02)
    gate.leave()
    waiter.join(timeout=5)
    assert results == [True]
    assert not gate.shedding()


def test_waits_above_the_target_for_an_interval_start_shedding() -> None:
    clock = Clock()
    gate = Gate(permits=1, target=0.01, interval=0.1, clock=clock)
    assert gate.enter()

    def release_later() -> None:
        time.sleep(0.05)
        clock.now += 0.06  # each wait lasts 60 ms by the gate's clock: above the 10 ms target
        gate.leave()

    for _ in range(2):
        releaser = threading.Thread(target=release_later)
        releaser.start()
        assert gate.enter()  # waited, got the permit
        releaser.join()
        assert (clock.now - 1000.0 >= 0.1) == gate.shedding()
    assert gate.shedding()  # 120 ms of waits above the target: a standing queue


def test_only_posts_to_the_event_paths_pass_the_gate() -> None:
    gate = Gate(permits=1, target=0.01, interval=0.01)
    assert gate.enter()  # the only permit is taken
    refused: list[str] = []
    app = wrap(
        lambda environ, start_response: [b"ok"],
        gates={"/api/v1/events": gate},
        retry_after=3,
        on_refusal=lambda path, seconds: refused.append(path),
    )
    statuses: list[tuple[str, dict[str, str]]] = []

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        statuses.append((status, dict(headers)))

    assert app({"PATH_INFO": "/api/v1/events", "REQUEST_METHOD": "GET"}, start_response) == [b"ok"]
    assert app({"PATH_INFO": "/metrics", "REQUEST_METHOD": "POST"}, start_response) == [b"ok"]
    body = app({"PATH_INFO": "/api/v1/events", "REQUEST_METHOD": "POST"}, start_response)
    assert statuses[-1][0].startswith("503")
    assert statuses[-1][1]["Retry-After"] == "3"
    assert b'"error"' in b"".join(body)
    assert refused == ["/api/v1/events"]


def test_a_request_let_through_is_served_knowing_when_it_arrived() -> None:
    """What it waited at the gate counts against INGEST_MAX_QUEUE_DELAY (ingestion.services.request_arrived)."""
    gate = Gate(permits=1, target=0.5, interval=1.0)
    assert gate.enter()
    seen: list[float | None] = []

    def app(environ: dict[str, str], start_response: object) -> list[bytes]:
        seen.append(services._arrived.get())
        return [b"ok"]

    served = wrap(app, gates={"/api/v1/events": gate}, retry_after=1)
    threading.Timer(0.05, gate.leave).start()  # the permit comes free while the request waits for it
    before = time.monotonic()
    assert served({"PATH_INFO": "/api/v1/events", "REQUEST_METHOD": "POST"}, lambda *a: None) == [b"ok"]
    arrived = seen[0]
    assert arrived is not None and before <= arrived <= before + 0.05  # when it came, not when it got the permit
    assert services._arrived.get() is None  # and forgotten once answered


def test_a_refused_request_s_body_is_read_unless_it_is_too_large_to_wait_for() -> None:
    """Read, the connection stays open for the client's next request (ingestion.shedding._drain); a body over
    DRAIN_LIMIT, or one of no declared length, is left to close its connection."""
    gate = Gate(permits=1, target=0.01, interval=0.01)
    assert gate.enter()
    app = wrap(lambda environ, start_response: [b"ok"], gates={"/api/v1/events": gate}, retry_after=1)

    def refused_with(body: bytes, declared: str) -> int:
        stream = io.BytesIO(body)
        environ = {"PATH_INFO": "/api/v1/events", "REQUEST_METHOD": "POST", "CONTENT_LENGTH": declared}
        app({**environ, "wsgi.input": stream}, lambda *a: None)
        return stream.tell()

    assert refused_with(b"x" * 300, "300") == 300
    assert refused_with(b"x" * (DRAIN_LIMIT + 1), str(DRAIN_LIMIT + 1)) == 0
    assert refused_with(b"x" * 300, "") == 0
