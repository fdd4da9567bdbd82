"""The queue-delay forecast of publisher.queue (pure logic: the readings are given, no Redis)."""

from __future__ import annotations

import pytest

from publisher import queue
from publisher.queue import Snapshot


@pytest.fixture(autouse=True)
def _no_trend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue, "_trend", None)
    monkeypatch.setattr(queue, "_measured", None)
    monkeypatch.setattr(queue, "_busy_rates", queue.deque(maxlen=queue._BUSY_WINDOWS))


def test_before_the_capacity_is_measured_the_delay_is_the_oldest_waiting_tasks_age() -> None:
    assert Snapshot(depth=5000, oldest_due_at=None).delay(100.0) == 0.0
    assert Snapshot(depth=5000, oldest_due_at=99.5).delay(100.0) == pytest.approx(0.5)
    assert Snapshot(depth=5000, oldest_due_at=101.0).delay(100.0) == 0.0  # a retry not yet due
    assert Snapshot(depth=5000, oldest_due_at=99.5).capacity_for_delay(0.25) is None


def test_an_event_waits_for_everything_queued_ahead_at_the_workers_capacity() -> None:
    """4,000 events queued, the workers finish 2,000/s: a new event waits 2 s, though the oldest task waiting
    has waited only 0.1 s so far (the age lags an overload); 500 events is what keeps the wait at 0.25 s."""
    snapshot = Snapshot(depth=4000, oldest_due_at=99.9, capacity=2000.0)
    assert snapshot.delay(100.0) == pytest.approx(2.0)
    assert snapshot.capacity_for_delay(0.25) == 500
    # Prefetched and running tasks count too, with no task left waiting in the queue's list.
    assert Snapshot(depth=4000, oldest_due_at=None, capacity=2000.0).delay(100.0) == pytest.approx(2.0)
    # Never less than what the oldest has already waited (a counter that drifted low).
    assert Snapshot(depth=10, oldest_due_at=99.0, capacity=2000.0).delay(100.0) == pytest.approx(1.0)
    assert Snapshot(depth=0, oldest_due_at=None, capacity=2000.0).delay(100.0) == 0.0


def test_workers_that_finish_nothing_mean_an_endless_wait() -> None:
    snapshot = Snapshot(depth=10, oldest_due_at=99.9, capacity=0.0)
    assert snapshot.delay(100.0) == float("inf")
    assert snapshot.capacity_for_delay(0.25) == 0


def test_only_a_window_with_tasks_waiting_throughout_measures_the_capacity() -> None:
    # Quiet: the workers finish what comes (100/s), which says nothing of what they can do.
    assert queue._capacity(100.0, 1000, waiting=False) is None
    assert queue._capacity(101.0, 1100, waiting=False) is None
    # Tasks wait from now on: the next whole window measures 2,000/s.
    assert queue._capacity(102.0, 1200, waiting=True) is None
    assert queue._capacity(102.5, 2200, waiting=True) is None  # under a window: too soon to tell
    assert queue._capacity(103.0, 3200, waiting=True) == pytest.approx(2000.0)
    assert queue._capacity(103.5, 3300, waiting=True) == pytest.approx(2000.0)  # kept until the next window
    # The backlog gone, they finish 500/s: that is all that was offered, the capacity stays.
    assert queue._capacity(104.0, 3700, waiting=False) == pytest.approx(2000.0)
    assert queue._capacity(105.0, 4200, waiting=False) == pytest.approx(2000.0)
    # More than the capacity measured (more workers now): the figure rises.
    assert queue._capacity(106.0, 7200, waiting=False) == pytest.approx(3000.0)
    # Busy throughout and slower (a worker gone): it falls.
    assert queue._capacity(107.0, 8200, waiting=True) == pytest.approx(3000.0)  # started idle: a lower bound
    assert queue._capacity(108.0, 9200, waiting=True) == pytest.approx(1000.0)
    # A process that read nothing for a while starts a new window instead of averaging over the gap.
    assert queue._capacity(200.0, 9300, waiting=True) == pytest.approx(1000.0)
    assert queue._capacity(201.0, 9800, waiting=True) == pytest.approx(500.0)


def test_the_capacity_is_the_slowest_of_the_last_three_busy_windows() -> None:
    """One busy window's rate varies with what else runs on the cores; a rate too high would let the queue hold
    more than the workers finish within the limit, so the lowest of the last three counts."""
    queue._capacity(100.0, 0, waiting=True)
    assert queue._capacity(101.0, 2000, waiting=True) == pytest.approx(2000.0)
    assert queue._capacity(102.0, 3500, waiting=True) == pytest.approx(1500.0)
    assert queue._capacity(103.0, 6000, waiting=True) == pytest.approx(1500.0)
    assert queue._capacity(104.0, 8500, waiting=True) == pytest.approx(1500.0)
    assert queue._capacity(105.0, 11000, waiting=True) == pytest.approx(2500.0)  # the 1,500 window has passed
    # A quiet window that shows more than that (workers added) replaces the busy windows' figure at once.
    assert queue._capacity(106.0, 14000, waiting=False) == pytest.approx(3000.0)
    assert queue._capacity(107.0, 16800, waiting=True) == pytest.approx(3000.0)  # started quiet: a lower bound
    assert queue._capacity(108.0, 19600, waiting=True) == pytest.approx(2800.0)
