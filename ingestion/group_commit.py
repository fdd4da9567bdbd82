"""Group commit for threads of one process: concurrent callers hand their items to whichever of them leads, and
the leader does one round of work (one Redis round trip, one task) for every item queued meanwhile.

A lone caller goes straight through, and under load the groups grow by themselves. A leader also waits up to
`linger()` for companions: for callers that announced themselves (`expecting()`, e.g. while their request is
still being parsed) until they join, and the whole time when the last group was shared by several callers and
ended moments ago (concurrent traffic). A sequential client, alone in each of its groups, never waits — unless
the owner says to `hold()` (its consumers are behind): then every leader waits the whole time. Each
waiting thread is woken exactly once: when its item is done, or to lead the next group. On a 2-core
machine a blocking round trip per request costs far more than the command itself (GIL hand-offs, context
switches), so sharing one among a group is where the web tier's CPU goes down.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(eq=False)
class _Announcement:
    group: Any
    joined: bool = False


_announced: ContextVar[_Announcement | None] = ContextVar("group_commit_announced", default=None)


class _Waiter(Generic[T, R]):
    """One caller's item and answer. `wake()` lets its thread out of `wait()`; each waiting thread is woken exactly
    once, so a bare lock (taken here, released by the waker) does what an Event would, for less."""

    __slots__ = ("_gate", "error", "finished", "item", "result")

    def __init__(self, item: T) -> None:
        self.item = item
        self.result: R | None = None
        self.error: BaseException | None = None
        self.finished = False
        self._gate = threading.Lock()
        self._gate.acquire()

    def wait(self) -> None:
        self._gate.acquire()

    def wake(self) -> None:
        self._gate.release()


class GroupCommit(Generic[T, R]):
    """`run(items)` returns one result per item, in order; if it raises, every caller of the group raises (its
    own copy of) that error. A group stops before `max_weight` (summed `weight` of its items; the first item
    is always taken, however heavy). `linger()` gives the most seconds a leader waits for companions (0: never).
    `hold()` gives seconds a leader waits for companions the whole time, whoever announced themselves (0: not now):
    for when the consumers of the groups are behind, so waiting costs the items nothing and larger groups help."""

    def __init__(
        self,
        run: Callable[[list[T]], list[R]],
        *,
        weight: Callable[[T], int] = lambda _: 1,
        max_weight: Callable[[], int] | None = None,
        linger: Callable[[], float] = lambda: 0.0,
        hold: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self._run = run
        self._weight = weight
        self._max_weight = max_weight
        self._linger = linger
        self._hold = hold
        self._lock = threading.Lock()
        self._joined = threading.Condition(self._lock)
        self._queue: list[_Waiter[T, R]] = []
        self._busy = False
        self._expected = 0  # announced callers that have not submitted yet
        self._queued_weight = 0  # summed weight of the items in _queue
        # What a leader in its wait loop waits for: "expected" (the announced callers), "time" (the whole linger or
        # hold: only a full group ends it), or None (no leader waiting, nobody to notify).
        self._leader_waits_for: str | None = None
        self._last_group_size = 0
        self._last_group_end = 0.0

    @contextmanager
    def expecting(self) -> Iterator[None]:
        """Announce that this thread will submit shortly; a leader lingering for companions waits for it."""
        announcement = _Announcement(self)
        with self._lock:
            self._expected += 1
        token = _announced.set(announcement)
        try:
            yield
        finally:
            _announced.reset(token)
            if not announcement.joined:  # it will not submit after all (a refused request)
                with self._lock:
                    self._expected -= 1
                    if self._expected == 0 and self._leader_waits_for == "expected":
                        self._joined.notify()

    def submit(self, item: T) -> R:
        mine: _Waiter[T, R] = _Waiter(item)
        announcement = _announced.get()
        with self._lock:
            if announcement is not None and (announcement.group is not self or announcement.joined):
                announcement = None  # not one this group is waiting for
            if announcement is not None:
                announcement.joined = True
                self._expected -= 1
            self._queue.append(mine)
            self._queued_weight += self._weight(item)
            # A waiting leader looks again only when all it expected are in, or when its group is full.
            waits_for = self._leader_waits_for
            if waits_for is not None and (
                (waits_for == "expected" and self._expected == 0) or self._full(self._limit())
            ):
                self._joined.notify()
            leading = not self._busy
            self._busy = True
        if not leading:
            mine.wait()
        if not mine.finished:
            self._lead(mine)
        if mine.error is not None:
            own = _own_copy(mine.error)
            if own is mine.error:
                raise own
            raise own from mine.error
        return mine.result  # type: ignore[return-value]  # set for every finished waiter without an error

    def _limit(self) -> int | None:
        return self._max_weight() if self._max_weight is not None else None

    def _full(self, limit: int | None) -> bool:
        return limit is not None and self._queued_weight >= limit

    def _lead(self, mine: _Waiter[T, R]) -> None:
        wait = self._linger()
        limit = self._limit()
        hold = self._hold()  # outside the lock: it may ask another service
        with self._lock:
            now = time.monotonic()
            deadline = now + max(wait, hold)
            # Traffic from several callers at once (the last group was shared and ended moments ago): more are
            # on their way, wait the whole time. Otherwise wait only for callers that announced themselves.
            concurrent = hold > 0 or (self._last_group_size > 1 and now - self._last_group_end < 2 * wait)
            self._leader_waits_for = "time" if concurrent else "expected"
            while (
                (concurrent or self._expected > 0)
                and not self._full(limit)
                and (remaining := deadline - time.monotonic()) > 0
            ):
                self._joined.wait(remaining)
            self._leader_waits_for = None
            taken = cut = 0
            while cut < len(self._queue):
                weight = self._weight(self._queue[cut].item)
                if cut > 0 and limit is not None and taken + weight > limit:
                    break
                taken += weight
                cut += 1
            group, self._queue = self._queue[:cut], self._queue[cut:]
            self._queued_weight -= taken
        try:
            results = self._run([waiter.item for waiter in group])
            for waiter, result in zip(group, results, strict=True):
                waiter.result = result
        except BaseException as exc:
            for waiter in group:
                waiter.error = exc
        finally:
            for waiter in group:
                waiter.finished = True
                if waiter is not mine:  # the leader is awake, and was woken already if it waited to lead
                    waiter.wake()
            with self._lock:
                self._last_group_size = len(group)
                self._last_group_end = time.monotonic()
                if self._queue:
                    self._queue[0].wake()  # still busy: the next leader takes over
                else:
                    self._busy = False


def _own_copy(error: BaseException) -> BaseException:
    """Each caller raises its own exception object: one shared object would collect every thread's traceback."""
    try:
        return copy.copy(error)
    except Exception:
        return error


class GroupCommits(Generic[T, R]):
    """One GroupCommit per key (an API key, a source), made on first use."""

    def __init__(self, make: Callable[[str], GroupCommit[T, R]]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self.by_key: dict[str, GroupCommit[T, R]] = {}

    def get(self, key: str) -> GroupCommit[T, R]:
        group = self.by_key.get(key)
        if group is None:
            with self._lock:
                group = self.by_key.get(key)
                if group is None:
                    group = self.by_key[key] = self._make(key)
        return group

    def submit(self, key: str, item: T) -> R:
        return self.get(key).submit(item)
