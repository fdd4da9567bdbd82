"""Group commit for threads of one process: concurrent callers hand their items to whichever of them leads, and
the leader does one round of work (one Redis round trip, one task) for every item queued meanwhile.

Nothing waits on a timer: a lone caller goes straight through, and under load the groups grow by themselves.
Each waiting thread is woken exactly once: when its item is done, or to lead the next group. On a 2-core
machine a blocking round trip per request costs far more than the command itself (GIL hand-offs, context
switches), so sharing one among a group is where the web tier's CPU goes down.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(eq=False)
class _Waiter(Generic[T, R]):
    item: T
    result: R | None = None
    error: BaseException | None = None
    finished: bool = False
    wake: threading.Event = field(default_factory=threading.Event)


class GroupCommit(Generic[T, R]):
    """`run(items)` returns one result per item, in order; if it raises, every caller of the group raises (its
    own copy of) that error. A group stops before `max_weight` (summed `weight` of its items; the first item
    is always taken, however heavy). `linger()` gives seconds the leader waits for companions when the last
    group ended less than two such waits ago (0: never)."""

    def __init__(
        self,
        run: Callable[[list[T]], list[R]],
        *,
        weight: Callable[[T], int] = lambda _: 1,
        max_weight: Callable[[], int] | None = None,
        linger: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self._run = run
        self._weight = weight
        self._max_weight = max_weight
        self._linger = linger
        self._lock = threading.Lock()
        self._queue: list[_Waiter[T, R]] = []
        self._busy = False
        self._last_group_end = 0.0

    def submit(self, item: T) -> R:
        mine: _Waiter[T, R] = _Waiter(item)
        with self._lock:
            self._queue.append(mine)
            leading = not self._busy
            self._busy = True
        if not leading:
            mine.wake.wait()
        if not mine.finished:
            self._lead()
        if mine.error is not None:
            own = _own_copy(mine.error)
            if own is mine.error:
                raise own
            raise own from mine.error
        return mine.result  # type: ignore[return-value]  # set for every finished waiter without an error

    def _lead(self) -> None:
        wait = self._linger()
        if wait > 0 and time.monotonic() - self._last_group_end < 2 * wait:
            # The previous group ended moments ago: requests are arriving faster than one per two waits, so
            # companions are likely. After a quieter spell a caller goes straight through.
            time.sleep(wait)
        limit = self._max_weight() if self._max_weight is not None else None
        with self._lock:
            taken = cut = 0
            while cut < len(self._queue):
                weight = self._weight(self._queue[cut].item)
                if cut > 0 and limit is not None and taken + weight > limit:
                    break
                taken += weight
                cut += 1
            group, self._queue = self._queue[:cut], self._queue[cut:]
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
                waiter.wake.set()
            self._last_group_end = time.monotonic()
            with self._lock:
                if self._queue:
                    self._queue[0].wake.set()  # still busy: the next leader takes over
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

    def submit(self, key: str, item: T) -> R:
        group = self.by_key.get(key)
        if group is None:
            with self._lock:
                group = self.by_key.get(key)
                if group is None:
                    group = self.by_key[key] = self._make(key)
        return group.submit(item)
