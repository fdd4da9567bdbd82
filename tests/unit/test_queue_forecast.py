"""The queue-delay forecast of publisher.queue (pure logic: the readings are given, no Redis)."""

from __future__ import annotations

import pytest

from publisher import queue
from publisher.queue import Snapshot


@pytest.fixture(autouse=True)
def _no_trend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue, "_trend", None)


def test_no_task_waiting_means_no_delay_and_no_delay_capacity() -> None:
    """Every task is with a worker: the workers have room, whatever their rate."""
    snapshot = Snapshot(depth=5000, oldest_due_at=None, drain_rate=100.0)
    assert snapshot.delay(100.0) == 0.0
    assert snapshot.capacity_for_delay(0.25) is None


def test_before_the_rate_is_measured_the_delay_is_the_oldest_tasks_age() -> None:
    assert Snapshot(depth=5000, oldest_due_at=99.5).delay(100.0) == pytest.approx(0.5)
    assert Snapshot(depth=5000, oldest_due_at=101.0).delay(100.0) == 0.0  # a retry not yet due
    assert Snapshot(depth=5000, oldest_due_at=99.5).capacity_for_delay(0.25) is None


def test_busy_workers_take_depth_over_their_rate() -> None:
    """4,000 events queued, the workers finish 2,000/s: a new event waits 2 s, though the oldest task waiting
    has waited only 0.1 s so far (the age lags an overload); 500 events is what keeps the wait at 0.25 s."""
    snapshot = Snapshot(depth=4000, oldest_due_at=99.9, drain_rate=2000.0)
    assert snapshot.delay(100.0) == pytest.approx(2.0)
    assert snapshot.capacity_for_delay(0.25) == 500
    # Never less than what the oldest has already waited (a counter that drifted low).
    assert Snapshot(depth=10, oldest_due_at=99.0, drain_rate=2000.0).delay(100.0) == pytest.approx(1.0)


def test_tasks_waiting_while_none_finishes_is_an_endless_wait() -> None:
    snapshot = Snapshot(depth=10, oldest_due_at=99.9, drain_rate=0.0)
    assert snapshot.delay(100.0) == float("inf")
    assert snapshot.capacity_for_delay(0.25) == 0


def test_the_rate_is_measured_only_while_tasks_wait() -> None:
    assert queue._drain_rate(100.0, 1000, waiting=True) is None  # first reading of this backlog
    assert queue._drain_rate(100.5, 1200, waiting=True) is None  # under a window: too soon to tell
    assert queue._drain_rate(101.0, 3000, waiting=True) == pytest.approx(2000.0)  # 2,000 events in 1 s
    assert queue._drain_rate(101.5, 3100, waiting=True) == pytest.approx(2000.0)  # kept until the next window
    assert queue._drain_rate(102.0, 2900, waiting=True) == 0.0  # the count went back (Redis lost writes)
    # The queue emptied: what the workers did next is what was offered, not what they can do. Start over.
    assert queue._drain_rate(102.5, 3500, waiting=False) is None
    assert queue._drain_rate(103.0, 3600, waiting=True) is None
