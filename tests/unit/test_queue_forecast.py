"""The queue-delay forecast of publisher.queue (pure logic: the readings are given, no Redis)."""

from __future__ import annotations

import pytest

from publisher import queue
from publisher.queue import Snapshot


@pytest.fixture(autouse=True)
def _no_trend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue, "_trend", None)


def test_nothing_waiting_means_no_delay() -> None:
    assert Snapshot(depth=5, oldest_due_at=None, drain_ratio=0.0).delay(100.0) == 0.0


def test_without_a_trend_the_delay_is_the_oldest_tasks_age() -> None:
    assert Snapshot(depth=5, oldest_due_at=99.5, drain_ratio=None).delay(100.0) == pytest.approx(0.5)
    assert Snapshot(depth=5, oldest_due_at=99.5, drain_ratio=1.7).delay(100.0) == pytest.approx(0.5)
    assert Snapshot(depth=5, oldest_due_at=101.0, drain_ratio=None).delay(100.0) == 0.0  # a retry not yet due


def test_arrivals_outpacing_the_workers_stretch_the_age() -> None:
    """Tasks arrive four times as fast as the workers take them: one enqueued now waits four times the head's age."""
    assert Snapshot(depth=5, oldest_due_at=99.9, drain_ratio=0.25).delay(100.0) == pytest.approx(0.4)
    # A head that does not move (no worker takes anything) forecasts 20 times its age, not infinity.
    assert Snapshot(depth=5, oldest_due_at=99.9, drain_ratio=0.0).delay(100.0) == pytest.approx(2.0)


def test_the_drain_ratio_is_how_far_the_head_moved_per_second() -> None:
    assert queue._drain_ratio(100.0, 99.0) is None  # first reading of this backlog
    assert queue._drain_ratio(100.2, 99.0) is None  # too soon to tell
    assert queue._drain_ratio(101.0, 99.25) == pytest.approx(0.25)  # 0.25 s of due times taken in 1 s
    assert queue._drain_ratio(101.2, 99.3) == pytest.approx(0.25)  # kept until the next window
    assert queue._drain_ratio(101.5, 99.2) == 0.0  # moved back (a task put back at the head): nothing taken
    assert queue._drain_ratio(101.6, None) is None  # the queue emptied: start over
    assert queue._drain_ratio(101.8, 101.7) is None
