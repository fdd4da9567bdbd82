"""ingestion.group_commit: who runs with whom, and what each caller gets back."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from ingestion.group_commit import GroupCommit

release = threading.Event()  # holds the first run until every other caller is queued behind it


@pytest.fixture(autouse=True)
def _reset_release() -> None:
    release.clear()


def _run_held(group_commit: GroupCommit[int, str], items: list[int], runs: list[list[int]]) -> list[object]:
    """Submit items[0], and while its run is held, submit the rest from their own threads; returns each
    caller's result (or exception)."""
    answers: list[object] = [None] * len(items)

    def submit(n: int) -> None:
        try:
            answers[n] = group_commit.submit(items[n])
        except Exception as exc:
            answers[n] = exc

    first = threading.Thread(target=submit, args=(0,))
    first.start()
    deadline = time.monotonic() + 5
    while not runs and time.monotonic() < deadline:
        time.sleep(0.001)
    others = [threading.Thread(target=submit, args=(n,)) for n in range(1, len(items))]
    for thread in others:
        thread.start()
    while len(group_commit._queue) < len(items) - 1 and time.monotonic() < deadline:
        time.sleep(0.001)
    release.set()
    for thread in [first, *others]:
        thread.join(5)
    return answers


def _recording_run(runs: list[list[int]], *, hold_first: bool = True) -> Callable[[list[int]], list[str]]:
    def run(group: list[int]) -> list[str]:
        runs.append(list(group))
        if hold_first and len(runs) == 1:
            release.wait(5)
        return [f"done {item}" for item in group]

    return run


def test_a_lone_caller_runs_alone() -> None:
    runs: list[list[int]] = []
    group_commit: GroupCommit[int, str] = GroupCommit(_recording_run(runs, hold_first=False))
    assert group_commit.submit(7) == "done 7"
    assert runs == [[7]]


def test_callers_arriving_during_a_run_go_together_and_each_gets_its_own_result() -> None:
    runs: list[list[int]] = []
    group_commit: GroupCommit[int, str] = GroupCommit(_recording_run(runs))
    answers = _run_held(group_commit, [0, 1, 2, 3, 4], runs)
    assert answers == ["done 0", "done 1", "done 2", "done 3", "done 4"]
    assert runs[0] == [0]
    assert sorted(runs[1]) == [1, 2, 3, 4] and len(runs) == 2


def test_a_group_stops_before_its_weight_limit() -> None:
    runs: list[list[int]] = []
    group_commit: GroupCommit[int, str] = GroupCommit(_recording_run(runs), weight=lambda item: 2, max_weight=lambda: 5)
    answers = _run_held(group_commit, [0, 1, 2, 3, 4, 5], runs)
    assert answers == [f"done {n}" for n in range(6)]
    assert [len(group) for group in runs] == [1, 2, 2, 1]


def test_a_failed_run_fails_every_caller_of_the_group_with_its_own_copy() -> None:
    runs: list[list[int]] = []

    def run(group: list[int]) -> list[str]:
        runs.append(list(group))
        if len(runs) == 1:
            release.wait(5)
        if len(runs) != 2:
            return ["done"]
        raise ValueError(f"refused {len(group)}")

    group_commit: GroupCommit[int, str] = GroupCommit(run)
    answers = _run_held(group_commit, [0, 1, 2, 3], runs)
    assert answers[0] == "done"
    errors = answers[1:]
    assert all(isinstance(e, ValueError) and str(e) == "refused 3" for e in errors), errors
    assert len({id(e) for e in errors}) == 3
    # the next caller starts a fresh group
    assert group_commit.submit(9) == "done"
    assert runs[-1] == [9]


def test_after_a_shared_group_a_leader_waits_for_companions_and_after_a_lone_one_it_does_not() -> None:
    runs: list[list[int]] = []
    group_commit: GroupCommit[int, str] = GroupCommit(_recording_run(runs), linger=lambda: 0.2)
    _run_held(group_commit, [0, 1, 2], runs)  # runs [0], then [1, 2]: concurrent traffic
    started = time.monotonic()
    assert group_commit.submit(3) == "done 3"
    assert time.monotonic() - started >= 0.19  # concurrent traffic: more are likely on their way
    started = time.monotonic()
    assert group_commit.submit(4) == "done 4"
    assert time.monotonic() - started < 0.1  # the last group was this caller alone: a sequential client


def _lead_then_join(group_commit: GroupCommit[int, str], *, pause: float) -> tuple[list[object], float]:
    """Submit 0 from a thread, and `pause` seconds later 1 (never announced); returns both answers and the
    seconds from the first submit until both are done."""
    answers: list[object] = [None, None]

    def submit(n: int) -> None:
        answers[n] = group_commit.submit(n)

    first = threading.Thread(target=submit, args=(0,))
    started = time.monotonic()
    first.start()
    time.sleep(pause)
    submit(1)
    first.join(5)
    return answers, time.monotonic() - started


def test_while_held_a_lone_leader_waits_the_whole_hold_and_takes_a_caller_that_never_announced() -> None:
    runs: list[list[int]] = []
    holding = [0.3]
    group_commit: GroupCommit[int, str] = GroupCommit(
        _recording_run(runs, hold_first=False), linger=lambda: 0.01, hold=lambda: holding[0]
    )
    answers, took = _lead_then_join(group_commit, pause=0.1)  # longer than linger(): only the hold keeps it waiting
    assert answers == ["done 0", "done 1"]
    assert runs == [[0, 1]]
    assert took >= 0.29  # it waited the whole hold, not only until the companion came

    holding[0] = 0.0
    started = time.monotonic()
    assert group_commit.submit(2) == "done 2"
    assert time.monotonic() - started < 0.1  # not held: a lone caller goes straight through again
    assert runs[-1] == [2]


def test_a_held_leader_stops_waiting_once_its_group_is_full() -> None:
    runs: list[list[int]] = []
    group_commit: GroupCommit[int, str] = GroupCommit(
        _recording_run(runs, hold_first=False), weight=lambda item: 2, max_weight=lambda: 4, hold=lambda: 5.0
    )
    answers, took = _lead_then_join(group_commit, pause=0.05)
    assert answers == ["done 0", "done 1"]
    assert runs == [[0, 1]]
    assert took < 1.0  # full at 4: the 5-second hold was not sat out
