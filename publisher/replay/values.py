"""What the dead-letter operations share: the states they act on, their errors and results, who acts, pacing."""

from __future__ import annotations

import getpass
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from events.schema import FieldError
from publisher.models import DeadLetter, DeadLetterSettings

if TYPE_CHECKING:
    from django.contrib.auth.models import User

Status = DeadLetter.Status
EDITABLE_STATUSES = (Status.PENDING, Status.QUARANTINED)
DISCARDABLE_STATUSES = (Status.PENDING, Status.QUARANTINED)
# One admin request replays at most this many selected rows; more is a job for "Replay by filter".
BULK_ACTION_LIMIT = 1000
# Chunks hold about half a second of work at the requested rate, so pacing is smooth and Cancel is quick.
MAX_CHUNK = 200


class ReplayError(Exception):
    """A dead-letter operation was refused; the message is meant for the operator."""


class StateConflict(ReplayError):
    """The row is not (or no longer) in a state that allows the operation."""


class KafkaUnavailable(ReplayError):
    """The circuit breaker is open: replaying now would only add failures."""


class PayloadInvalid(ReplayError):
    def __init__(self, errors: Sequence[FieldError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = list(errors)


class UnknownTopic(Exception):
    """The target topic does not exist on the broker (topics are never auto-created)."""


class Unrouted(Exception):
    """Re-routing was asked for and no enabled rule matches the event now."""


@dataclass(frozen=True)
class Actor:
    """Who did it: an admin user, or a command line run (no user; the OS account is recorded)."""

    name: str
    via: str  # admin | bulk | job | command
    user: User | None = None

    @classmethod
    def for_user(cls, user: User, *, via: str) -> Actor:
        return cls(name=user.get_username(), via=via, user=user)

    @classmethod
    def command(cls, name: str, *, user: User | None = None) -> Actor:
        if user is not None:
            return cls(name=user.get_username(), via="command", user=user)
        try:
            os_user = getpass.getuser()
        except Exception:  # no passwd entry in a container
            os_user = "?"
        return cls(name=f"{name} ({os_user})"[:150], via="command")

    @property
    def user_id(self) -> Any:
        return None if self.user is None else self.user.pk


class ReplayResult(StrEnum):
    REPLAYED = "replayed"
    FAILED = "failed"
    QUARANTINED = "quarantined"
    SKIPPED = "skipped"  # not claimed: already replayed, being replayed, changed, discarded, ...


@dataclass(frozen=True)
class ReplayOutcome:
    dead_letter_id: int
    result: ReplayResult
    topics: tuple[str, ...] = ()
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.result is ReplayResult.REPLAYED

    def describe(self) -> str:
        if self.result is ReplayResult.REPLAYED:
            return f"Replayed to {', '.join(self.topics) or '(already delivered)'}."
        if self.result is ReplayResult.SKIPPED:
            return f"Not replayed: {self.error}"
        quarantined = " The entry is now quarantined." if self.result is ReplayResult.QUARANTINED else ""
        return f"Replay to {', '.join(self.topics) or '(no topic)'} failed: {self.error}.{quarantined}"


@dataclass
class ReplaySummary:
    replayed: int = 0
    failed: int = 0
    quarantined: int = 0  # also counted in failed
    skipped: int = 0
    outcomes: list[ReplayOutcome] = field(default_factory=list)

    def add(self, outcome: ReplayOutcome) -> None:
        self.outcomes.append(outcome)
        if outcome.result is ReplayResult.REPLAYED:
            self.replayed += 1
        elif outcome.result is ReplayResult.SKIPPED:
            self.skipped += 1
        else:
            self.failed += 1
            if outcome.result is ReplayResult.QUARANTINED:
                self.quarantined += 1

    def extend(self, outcomes: Iterable[ReplayOutcome]) -> None:
        for outcome in outcomes:
            self.add(outcome)

    @property
    def done(self) -> int:
        return self.replayed + self.failed + self.skipped

    def describe(self) -> str:
        text = f"{self.replayed} replayed, {self.failed} failed, {self.skipped} skipped"
        return text + (f" ({self.quarantined} quarantined)" if self.quarantined else "")


def settings_singleton() -> DeadLetterSettings:
    return DeadLetterSettings.get_solo()


class TokenBucket:
    """Paces work to `rate` events per second on average. `acquire(n)` sleeps until n more events may go.

    The bucket starts empty apart from `burst` so a bulk replay cannot spike; a caller that works slower than
    the rate never sleeps."""

    def __init__(
        self,
        rate: float,
        *,
        burst: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(1.0, burst)
        self._clock = clock
        self._sleep = sleep
        self._next = clock()  # the earliest time the next event may start (GCRA "theoretical arrival time")

    def acquire(self, n: int = 1) -> float:
        now = self._clock()
        self._next = max(self._next, now - (self.burst - 1) / self.rate)
        wait = self._next - now
        self._next += n / self.rate
        if wait > 0:
            self._sleep(wait)
            return wait
        return 0.0


def chunk_size_for(rate: float) -> int:
    return max(1, min(MAX_CHUNK, int(rate * 0.5)))


def header(row: DeadLetter, name: str) -> str | None:
    """A header of the original record, as stored on the row ([[name, value], ...])."""
    for item in row.headers or []:
        if isinstance(item, list | tuple) and len(item) == 2 and item[0] == name:
            return str(item[1])
    return None
