"""Dead-letter operations: replay (one, selected, by filter, as a paced background job), edit, discard, purge.

Replay publishes a dead letter's payload to its original topic (or, on request, to wherever the current rules
send it), serialized in each topic's current format, through this process's producer, and marks the row
replayed only after the broker acknowledged every record.

Exactly-once per click: a replay first *claims* the row with a compare-and-set
(``UPDATE ... SET status='replaying' WHERE id=%s AND status=<seen> AND replay_count=<seen>``, or
``SELECT ... FOR UPDATE SKIP LOCKED`` for a chunk), so a second click, a second browser tab or a concurrent job
finds nothing to claim and publishes nothing. A failed replay gives the row back (pending, new error,
replay_count + 1) until ``DeadLetterSettings.max_replays`` failures, after which it is quarantined: bulk and
background replays leave quarantined rows alone; an operator may still replay one from its page.

The one unavoidable window: if the process dies after the broker's ack and before the row is marked, the row
stays ``replaying`` until ``claim_timeout_seconds`` pass, then goes back to pending and may be replayed again
(at-least-once there; consumers dedupe by the ``event_id`` header as they must anyway).
"""

from __future__ import annotations

import getpass
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import DatabaseError, InterfaceError, transaction
from django.db.models import Count, F, Max, Q
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from events.schema import FieldError, validate_event
from events.timefmt import utc_iso_ms
from publisher import breaker as breaker_module
from publisher import kafka_gateway, metrics
from publisher.errors import error_class
from publisher.models import DeadLetter, DeadLetterSettings, ReplayAttempt, ReplayJob
from publisher.publishing import Record, await_acks, build_records
from routing.services import current_routing

if TYPE_CHECKING:
    from django.contrib.auth.models import User

logger = logging.getLogger(__name__)

Status = DeadLetter.Status
EDITABLE_STATUSES = (Status.PENDING, Status.QUARANTINED)
DISCARDABLE_STATUSES = (Status.PENDING, Status.QUARANTINED)
# One admin request replays at most this many selected rows; more is a job for "Replay by filter".
BULK_ACTION_LIMIT = 1000
# Chunks hold about half a second of work at the requested rate, so pacing is smooth and Cancel is quick.
MAX_CHUNK = 200
# A background job runs in slices of this many seconds, each a separate Celery task, so no single task comes
# near the broker's visibility timeout and a lost worker only delays the job.
JOB_SLICE_SECONDS = 30.0

# Only the fields a replay needs: the list can be millions of rows with 32 KiB payloads.
_REPLAY_FIELDS = (
    "id", "event_id", "event_type", "original_topic", "payload", "headers", "format", "source",
    "status", "replay_count", "delivered_topics",
)  # fmt: skip


# ------------------------------------------------------------------------------------------------ errors


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


# ------------------------------------------------------------------------------------------------ values


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


@dataclass(frozen=True)
class ReplayFilters:
    """Which pending dead letters a bulk replay takes. Empty fields do not filter."""

    topic: str = ""
    reason: str = ""
    error_class: str = ""
    event_type: str = ""
    since: datetime | None = None  # created_at >= since
    until: datetime | None = None  # created_at < until

    def q(self) -> Q:
        q = Q()
        if self.topic:
            q &= Q(original_topic=self.topic)
        if self.reason:
            q &= Q(reason=self.reason)
        if self.error_class:
            q &= Q(error_class=self.error_class)
        if self.event_type:
            q &= Q(event_type=self.event_type)
        if self.since is not None:
            q &= Q(created_at__gte=self.since)
        if self.until is not None:
            q &= Q(created_at__lt=self.until)
        return q

    def to_json(self) -> dict[str, str]:
        data = {"topic": self.topic, "reason": self.reason, "error_class": self.error_class}
        data["event_type"] = self.event_type
        if self.since is not None:
            data["since"] = self.since.isoformat()
        if self.until is not None:
            data["until"] = self.until.isoformat()
        return {k: v for k, v in data.items() if v}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReplayFilters:
        since, until = data.get("since"), data.get("until")
        return cls(
            topic=str(data.get("topic", "")),
            reason=str(data.get("reason", "")),
            error_class=str(data.get("error_class", "")),
            event_type=str(data.get("event_type", "")),
            since=datetime.fromisoformat(since) if since else None,
            until=datetime.fromisoformat(until) if until else None,
        )

    def describe(self) -> str:
        parts = [f"{name}={value}" for name, value in self.to_json().items()]
        return ", ".join(parts) or "all pending"


# ------------------------------------------------------------------------------------------------ helpers

_AGE = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> timedelta:
    """'30d', '12h', '90m', '2w', '45s' -> timedelta. Raises ValueError with a usable message."""
    match = _AGE.match(text or "")
    if not match:
        raise ValueError(f"{text!r} is not an age: use a number and a unit, e.g. 30d, 12h, 90m, 2w")
    return timedelta(seconds=int(match.group(1)) * _AGE_UNITS[match.group(2).lower()])


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """An age ('7d': that long ago), an ISO date (midnight UTC) or an ISO datetime (naive means UTC)."""
    now = now or timezone.now()
    if _AGE.match(text or ""):
        return now - parse_age(text)
    moment = parse_datetime(text or "")
    if moment is None:
        day = parse_date(text or "")
        if day is None:
            raise ValueError(f"{text!r} is not a date: use e.g. 2026-11-01, 2026-11-01T12:00:00Z or 7d")
        moment = datetime(day.year, day.month, day.day)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


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


def _ingested_at(row: DeadLetter) -> float:
    """Keep the event's original ingestion time on the replayed record."""
    text = header(row, "ingested_at")
    if text:
        try:
            return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return time.time()


# The producer blocks up to KAFKA_PRODUCER_TIMEOUT on a topic that does not exist (auto-creation is off), so a
# replay checks the broker's topic list first and fails at once with a clear error. Cached per process.
_TOPICS_TTL = 30.0
_TOPICS_MIN_REFRESH = 2.0
_topics_lock = threading.Lock()
_topics_cache: tuple[float, frozenset[str]] | None = None


def _broker_topics(*, refresh: bool) -> frozenset[str] | None:
    global _topics_cache
    with _topics_lock:
        now = time.monotonic()
        cached = _topics_cache
        if cached is not None:
            age = now - cached[0]
            if age < _TOPICS_TTL and not (refresh and age >= _TOPICS_MIN_REFRESH):
                return cached[1]
        try:
            names = frozenset(kafka_gateway.list_topics())
        except Exception as exc:  # the broker is unwell: let the send itself report it
            logger.warning("replay: cannot list Kafka topics: %r", exc)
            return cached[1] if cached is not None else None
        _topics_cache = (now, names)
        return names


def _missing_topics(topics: Iterable[str]) -> set[str]:
    wanted = set(topics)
    known = _broker_topics(refresh=False)
    if known is None or wanted <= known:
        return set()
    known = _broker_topics(refresh=True)
    return set() if known is None else wanted - known


def release_stale_claims() -> int:
    """Give back rows a crashed replay left in 'replaying' (see the module docstring)."""
    cutoff = timezone.now() - timedelta(seconds=settings_singleton().claim_timeout_seconds)
    count = DeadLetter.objects.filter(status=Status.REPLAYING, replay_claimed_at__lt=cutoff).update(
        status=Status.PENDING, replay_claimed_at=None
    )
    if count:
        logger.warning("released %d dead letters left in 'replaying' by a replay that did not finish", count)
    return count


def _ensure_breaker_closed() -> None:
    if breaker_module.current_state() == "open":
        raise KafkaUnavailable("Kafka is unavailable (the publisher's circuit breaker is open); try again later.")


# ------------------------------------------------------------------------------------------------ replay core


@dataclass
class _Claimed:
    row: DeadLetter
    prior_status: str
    topics: tuple[str, ...] = ()
    records: list[Record] = field(default_factory=list)
    error: BaseException | None = None
    acked: list[str] = field(default_factory=list)


def _plan(claimed: Sequence[_Claimed], *, reroute: bool) -> None:
    """Choose each row's target topics and serialize its records (errors are kept on the row, not raised)."""
    snapshot = current_routing()
    now_text = utc_iso_ms().encode()
    for item in claimed:
        row = item.row
        event: dict[str, Any] = dict(row.payload) if isinstance(row.payload, dict) else {}
        delivered = set(row.delivered_topics or [])
        try:
            if not event:
                raise ValueError("the payload is not a JSON object")
            if reroute:
                topics = snapshot.route(event).topics
                if not topics:
                    raise Unrouted("no enabled routing rule matches this event now")
            else:
                topics = (row.original_topic,)
            item.topics = tuple(t for t in topics if t not in delivered)
            if not item.topics:
                continue  # everything was delivered by an earlier (partly failed) replay
            formats = {row.original_topic: row.format} | dict(snapshot.topic_formats)
            records, broken = build_records(
                [event],
                {0: list(item.topics)},
                formats,
                source=row.source or header(row, "source") or "",
                accepted_at=_ingested_at(row),
            )
            if broken:
                raise broken[0].error or ValueError("cannot serialize the payload")
            extra = [("dlq_replay_count", str(row.replay_count + 1).encode()), ("dlq_replayed_at", now_text)]
            for record in records:
                record.headers = [*record.headers, *extra]
                record.header_block = None
            item.records = records
        except Exception as exc:
            item.error = exc


def _send(claimed: Sequence[_Claimed]) -> None:
    """Send every planned record, then wait for every acknowledgement."""
    planned = [item for item in claimed if item.error is None and item.records]
    if not planned:
        return
    missing = _missing_topics(r.topic for item in planned for r in item.records)
    producer = kafka_gateway.get_producer()
    futures: list[tuple[_Claimed, Record, Any]] = []
    for item in planned:
        for record in item.records:
            if record.topic in missing:
                record.error = UnknownTopic(f"topic {record.topic!r} does not exist on the broker")
                continue
            try:
                future = producer.send(record.topic, key=record.key, value=record.value, headers=record.headers)
            except Exception as exc:  # too large, no metadata, buffer full: the client refused it
                record.error = exc
            else:
                futures.append((item, record, future))
    await_acks([(record, future) for _item, record, future in futures], timeout=float(settings.KAFKA_PRODUCER_TIMEOUT))
    for item in planned:
        item.acked = [r.topic for r in item.records if r.error is None]
        failed = [r for r in item.records if r.error is not None]
        if failed:
            item.error = failed[0].error
            for record in failed:
                if record.error is not None:
                    metrics.FAILED.labels(topic=record.topic, error_class=error_class(record.error)).inc()


def _finish(
    claimed: Sequence[_Claimed], *, actor: Actor, reroute: bool, job: ReplayJob | None, log_history: bool
) -> list[ReplayOutcome]:
    """Record the results: rows and replay attempts in one transaction (retried briefly: the records are
    published, and a row left 'replaying' would be replayed again after the claim timeout), then, for jobs and
    commands, the admin history."""
    now = timezone.now()
    cap = settings_singleton().max_replays
    outcomes: list[ReplayOutcome] = []
    attempts: list[ReplayAttempt] = []
    updates: list[tuple[int, dict[str, Any]]] = []
    for item in claimed:
        row = item.row
        count = row.replay_count + 1
        changes: dict[str, Any] = {
            "replay_count": count,
            "delivered_topics": list(dict.fromkeys([*(row.delivered_topics or []), *item.acked])),
            "replay_claimed_at": None,
            "updated_at": now,
        }
        if item.error is None:
            changes |= {"status": Status.REPLAYED, "replayed_at": now, "replayed_by": actor.user}
            result = ReplayResult.REPLAYED
            klass = message = ""
        else:
            klass = error_class(item.error)
            message = str(item.error)[:4000] or klass
            quarantine = count >= cap or item.prior_status == Status.QUARANTINED
            changes |= {
                "status": Status.QUARANTINED if quarantine else Status.PENDING,
                "error_class": klass[:128],
                "error_message": message,
                "last_failed_at": now,
            }
            result = ReplayResult.QUARANTINED if quarantine else ReplayResult.FAILED
        updates.append((row.pk, changes))
        outcomes.append(ReplayOutcome(row.pk, result, item.topics, f"{klass}: {message}" if klass else ""))
        attempts.append(
            ReplayAttempt(
                dead_letter_id=row.pk,
                user=actor.user,
                actor=actor.name[:150],
                via=actor.via,
                job=job,
                at=now,
                result=str(result),
                rerouted=reroute,
                topics=list(item.topics),
                error_class=klass[:128],
                error=message,
            )
        )

    for attempt_number in range(1, 4):
        try:
            with transaction.atomic():
                for pk, changes in updates:
                    DeadLetter.objects.filter(pk=pk, status=Status.REPLAYING).update(**changes)
                ReplayAttempt.objects.bulk_create(attempts)
            break
        except DatabaseError:
            if attempt_number == 3 or transaction.get_connection().in_atomic_block:
                raise
            logger.warning("could not record %d replay results; retrying", len(updates), exc_info=True)
            time.sleep(0.5 * 2**attempt_number)
    if log_history and actor.user is not None:
        try:
            log_outcomes(user_id=actor.user.pk, rows=[item.row for item in claimed], outcomes=outcomes, via=actor.via)
        except DatabaseError:  # the replay attempts above are the record; don't fail the replay for the history
            logger.exception("could not write the admin history of %d replays", len(outcomes))
    for outcome in outcomes:
        log = logger.info if outcome.ok else logger.warning
        log(
            "dead letter %s %s",
            outcome.dead_letter_id,
            outcome.result,
            extra={"event": "dlq_replay", "result": str(outcome.result), "actor": actor.name, "via": actor.via},
        )
    return outcomes


def log_outcomes(*, user_id: Any, rows: Sequence[DeadLetter], outcomes: Sequence[ReplayOutcome], via: str) -> None:
    """Admin history entries (one per row, written in one INSERT per distinct message)."""
    by_message: dict[str, list[DeadLetter]] = {}
    rows_by_id = {row.pk: row for row in rows}
    for outcome in outcomes:
        row = rows_by_id.get(outcome.dead_letter_id)
        if row is not None:
            by_message.setdefault(f"[{via}] {outcome.describe()}", []).append(row)
    for message, group in by_message.items():
        LogEntry.objects.log_actions(user_id=user_id, queryset=group, action_flag=CHANGE, change_message=message)


def _process(
    claimed: list[_Claimed], *, actor: Actor, reroute: bool, job: ReplayJob | None = None, log_history: bool
) -> list[ReplayOutcome]:
    try:
        _plan(claimed, reroute=reroute)
        _send(claimed)
    except Exception as exc:  # never leave claimed rows behind: record the failure
        logger.exception("replay failed unexpectedly")
        for item in claimed:
            if item.error is None:
                item.error = exc
    return _finish(claimed, actor=actor, reroute=reroute, job=job, log_history=log_history)


def _claim_chunk(where: Q, *, limit: int) -> list[_Claimed]:
    """Claim up to `limit` pending rows matching `where`, oldest first; rows locked by others are skipped."""
    now = timezone.now()
    with transaction.atomic():
        rows = list(
            DeadLetter.objects.select_for_update(skip_locked=True)
            .filter(where, status=Status.PENDING)
            .order_by("id")
            .only(*_REPLAY_FIELDS)[:limit]
        )
        if rows:
            DeadLetter.objects.filter(pk__in=[row.pk for row in rows]).update(
                status=Status.REPLAYING, replay_claimed_at=now, updated_at=now
            )
    return [_Claimed(row=row, prior_status=Status.PENDING) for row in rows]


# ------------------------------------------------------------------------------------------------ public API


def replay_one(
    *, dead_letter_id: int, actor: Actor, reroute: bool = False, expected_replay_count: int | None = None
) -> ReplayOutcome:
    """Replay one dead letter (pending or quarantined). `expected_replay_count` is what the operator saw: if
    someone replayed it since, nothing happens. Raises KafkaUnavailable while the breaker is open."""
    release_stale_claims()
    row = DeadLetter.objects.only("id", "status", "replay_count").filter(pk=dead_letter_id).first()
    if row is None:
        return ReplayOutcome(dead_letter_id, ReplayResult.SKIPPED, error="it no longer exists")
    seen = row.replay_count if expected_replay_count is None else expected_replay_count
    if row.status not in (Status.PENDING, Status.QUARANTINED):
        return ReplayOutcome(dead_letter_id, ReplayResult.SKIPPED, error=_status_note(row.status))
    if row.replay_count != seen:
        return ReplayOutcome(dead_letter_id, ReplayResult.SKIPPED, error=_changed_note(seen, row.replay_count))
    _ensure_breaker_closed()
    now = timezone.now()
    # The compare-and-set: of two concurrent clicks, exactly one UPDATE matches.
    claimed = DeadLetter.objects.filter(pk=dead_letter_id, status=row.status, replay_count=seen).update(
        status=Status.REPLAYING, replay_claimed_at=now, updated_at=now
    )
    if not claimed:
        current = DeadLetter.objects.only("status", "replay_count").filter(pk=dead_letter_id).first()
        if current is None:
            note = "it no longer exists"
        elif current.status not in (Status.PENDING, Status.QUARANTINED):
            note = _status_note(current.status)
        else:
            note = _changed_note(seen, current.replay_count)
        return ReplayOutcome(dead_letter_id, ReplayResult.SKIPPED, error=note)
    # Read the payload after claiming: an edit saved a moment ago is what gets published.
    fresh = DeadLetter.objects.only(*_REPLAY_FIELDS).get(pk=dead_letter_id)
    return _process([_Claimed(fresh, prior_status=row.status)], actor=actor, reroute=reroute, log_history=False)[0]


def _status_note(status: str) -> str:
    if status == Status.REPLAYING:
        return "another replay of this entry is in progress"
    return f"it is already {status}"


def _changed_note(seen: int, now: int) -> str:
    return f"it was replayed by someone else meanwhile (replay count {seen} -> {now}); reload and check"


def replay_many(
    *,
    dead_letter_ids: Sequence[int],
    actor: Actor,
    reroute: bool = False,
    rate: float | None = None,
    log_history: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> ReplaySummary:
    """Replay the selected pending rows, paced at `rate` events/s (default: the settings' replay_rate).
    Rows that are not pending (quarantined, replayed, discarded, being replayed) are skipped. With
    `log_history` each row gets an admin history entry (the admin passes False and logs itself)."""
    release_stale_claims()
    _ensure_breaker_closed()
    rate = rate or settings_singleton().replay_rate
    bucket = TokenBucket(rate)
    summary = ReplaySummary()
    ids = list(dict.fromkeys(int(i) for i in dead_letter_ids))
    step = chunk_size_for(rate)
    for start in range(0, len(ids), step):
        if should_stop is not None and should_stop():
            break
        chunk = ids[start : start + step]
        claimed = _claim_chunk(Q(pk__in=chunk), limit=len(chunk))
        taken = {item.row.pk for item in claimed}
        if claimed:
            bucket.acquire(len(claimed))
            summary.extend(_process(claimed, actor=actor, reroute=reroute, log_history=log_history))
        for pk in chunk:
            if pk not in taken:
                summary.add(ReplayOutcome(pk, ReplayResult.SKIPPED, error="not pending"))
    return summary


def matching(*, filters: ReplayFilters, max_id: int | None = None) -> Any:
    """Pending rows a bulk replay with these filters would take (a QuerySet)."""
    queryset = DeadLetter.objects.filter(filters.q(), status=Status.PENDING)
    return queryset if max_id is None else queryset.filter(pk__lte=max_id)


def preview(*, filters: ReplayFilters, limit: int | None = None) -> dict[str, Any]:
    """What a replay by filter would do: how many rows, by topic and error class (for --dry-run and the admin)."""
    queryset = matching(filters=filters)
    total = queryset.count()
    by_topic = list(queryset.values("original_topic").annotate(n=Count("id")).order_by("-n")[:20])
    by_error = list(queryset.values("error_class").annotate(n=Count("id")).order_by("-n")[:20])
    return {
        "total": total if limit is None else min(total, limit),
        "matching": total,
        "by_topic": [(r["original_topic"], r["n"]) for r in by_topic],
        "by_error_class": [(r["error_class"], r["n"]) for r in by_error],
        "sample_ids": list(queryset.order_by("id").values_list("id", flat=True)[:10]),
    }


@dataclass
class FilterRun:
    summary: ReplaySummary
    cursor: int
    finished: bool  # nothing left to do (or the limit was reached)
    stopped: bool  # should_stop said so


def replay_by_filter(
    *,
    filters: ReplayFilters,
    actor: Actor,
    rate: float,
    limit: int | None = None,
    reroute: bool = False,
    cursor: int = 0,
    max_id: int | None = None,
    deadline: float | None = None,
    job: ReplayJob | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_chunk: Callable[[ReplaySummary, int], None] | None = None,
) -> FilterRun:
    """Replay pending rows matching `filters` in id order, paced at `rate` events/s, starting after `cursor`.
    Stops when done, at `limit` rows, when `should_stop()` is true (checked between chunks) or at `deadline`
    (time.monotonic). `on_chunk(chunk_summary, cursor)` reports progress. Raises KafkaUnavailable when the
    breaker is open before a chunk (what was done so far is already recorded)."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    release_stale_claims()
    if max_id is None:
        max_id = DeadLetter.objects.aggregate(m=Max("id"))["m"] or 0
    bucket = TokenBucket(rate)
    step = chunk_size_for(rate)
    summary = ReplaySummary()
    where = filters.q() & Q(pk__lte=max_id)
    while True:
        remaining = None if limit is None else limit - summary.done
        if remaining is not None and remaining <= 0:
            return FilterRun(summary, cursor, finished=True, stopped=False)
        if should_stop is not None and should_stop():
            return FilterRun(summary, cursor, finished=False, stopped=True)
        if deadline is not None and time.monotonic() >= deadline:
            return FilterRun(summary, cursor, finished=False, stopped=False)
        _ensure_breaker_closed()
        size = step if remaining is None else min(step, remaining)
        bucket.acquire(size)
        claimed = _claim_chunk(where & Q(pk__gt=cursor), limit=size)
        if not claimed:
            return FilterRun(summary, cursor, finished=True, stopped=False)
        outcomes = _process(claimed, actor=actor, reroute=reroute, job=job, log_history=True)
        chunk = ReplaySummary()
        chunk.extend(outcomes)
        summary.extend(outcomes)
        cursor = max(item.row.pk for item in claimed)
        if on_chunk is not None:
            on_chunk(chunk, cursor)


# ------------------------------------------------------------------------------------------------ background jobs


def start_job(
    *, filters: ReplayFilters, actor: Actor, rate: float, limit: int | None = None, reroute: bool = False
) -> ReplayJob:
    """Create a job and queue its first slice (after the transaction commits)."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    job = ReplayJob.objects.create(
        filters=filters.to_json(),
        reroute=reroute,
        rate=rate,
        limit=limit,
        created_by=actor.user,
        run_token=uuid.uuid4().hex,
    )
    token = job.run_token
    transaction.on_commit(lambda: _enqueue_slice(job_id=job.pk, token=token))
    logger.info("replay job %s queued by %s: %s", job.pk, actor.name, filters.describe())
    return job


def _enqueue_slice(*, job_id: int, token: str, countdown: float = 0) -> None:
    from publisher.tasks import replay_dead_letters

    replay_dead_letters.apply_async(kwargs={"job_id": job_id, "token": token}, countdown=countdown or None)


def cancel_job(*, job_id: int) -> ReplayJob:
    """Ask a job to stop; a queued job is cancelled at once, a running one at its next chunk."""
    now = timezone.now()
    ReplayJob.objects.filter(pk=job_id, status=ReplayJob.Status.QUEUED).update(
        cancelled=True, status=ReplayJob.Status.CANCELLED, finished_at=now
    )
    ReplayJob.objects.filter(pk=job_id, status=ReplayJob.Status.RUNNING).update(cancelled=True)
    return ReplayJob.objects.get(pk=job_id)


def run_job_slice(*, job_id: int, token: str, budget_seconds: float = JOB_SLICE_SECONDS) -> None:
    """One slice of a job (the Celery task's body). Only the holder of the job's current token runs; a slice
    that runs out of time hands a new token to the next slice, which it queues."""
    job = ReplayJob.objects.filter(pk=job_id).first()
    if job is None or job.run_token != token or not job.is_active:
        return
    # Admin history rows name a content type; a worker lives for weeks, so don't trust its cached ids (a restored
    # or re-created database has new ones). One query per slice.
    ContentType.objects.clear_cache()
    now = timezone.now()
    if job.cancelled:
        ReplayJob.objects.filter(pk=job_id).update(status=ReplayJob.Status.CANCELLED, finished_at=now)
        return
    filters = ReplayFilters.from_json(job.filters)
    if job.status == ReplayJob.Status.QUEUED:
        job.max_id = DeadLetter.objects.aggregate(m=Max("id"))["m"] or 0
        total = matching(filters=filters, max_id=job.max_id).count()
        job.total = total if job.limit is None else min(total, job.limit)
        job.status = ReplayJob.Status.RUNNING
        job.started_at = now
        job.save(update_fields=["max_id", "total", "status", "started_at", "updated_at"])

    def should_stop() -> bool:
        return ReplayJob.objects.filter(pk=job_id, cancelled=True).exists()

    def on_chunk(chunk: ReplaySummary, cursor: int) -> None:
        ReplayJob.objects.filter(pk=job_id).update(
            done=F("done") + chunk.done,
            replayed=F("replayed") + chunk.replayed,
            failed=F("failed") + chunk.failed,
            skipped=F("skipped") + chunk.skipped,
            cursor=cursor,
            updated_at=timezone.now(),
        )

    actor = Actor.for_user(job.created_by, via="job") if job.created_by is not None else Actor(f"job #{job_id}", "job")
    try:
        run = replay_by_filter(
            filters=filters,
            actor=actor,
            rate=job.rate,
            limit=None if job.limit is None else max(0, job.limit - job.done),
            reroute=job.reroute,
            cursor=job.cursor,
            max_id=job.max_id,
            deadline=time.monotonic() + budget_seconds,
            job=job,
            should_stop=should_stop,
            on_chunk=on_chunk,
        )
    except KafkaUnavailable as exc:
        _continue_job(job_id=job_id, token=token, countdown=10.0, note=str(exc))
        return
    except Exception as exc:
        if isinstance(exc, DatabaseError | InterfaceError):
            raise  # the task retries; the same token resumes the job
        ReplayJob.objects.filter(pk=job_id).update(
            status=ReplayJob.Status.FAILED, error=repr(exc)[:4000], finished_at=timezone.now()
        )
        logger.exception("replay job %s failed", job_id)
        return
    if run.stopped:
        ReplayJob.objects.filter(pk=job_id).update(status=ReplayJob.Status.CANCELLED, finished_at=timezone.now())
    elif run.finished:
        ReplayJob.objects.filter(pk=job_id).update(status=ReplayJob.Status.FINISHED, finished_at=timezone.now())
    else:
        _continue_job(job_id=job_id, token=token)


def _continue_job(*, job_id: int, token: str, countdown: float = 0, note: str = "") -> None:
    new_token = uuid.uuid4().hex
    if ReplayJob.objects.filter(pk=job_id, run_token=token).update(run_token=new_token, error=note):
        transaction.on_commit(lambda: _enqueue_slice(job_id=job_id, token=new_token, countdown=countdown))


# ------------------------------------------------------------------------------------------------ edit, discard, purge


def validate_payload(*, payload: Any, dead_letter: DeadLetter) -> dict[str, Any]:
    """Validate an edited payload against the event schema; returns the normalized event. The event's identity
    (event_id, event_type) must stay: a replay re-sends *this* event. Raises PayloadInvalid with every error."""
    if not isinstance(payload, dict):
        raise PayloadInvalid([FieldError("", "the payload must be a JSON object (an event)")])
    candidate = dict(payload)
    candidate.setdefault("event_id", str(dead_letter.event_id))
    checked = validate_event(candidate)
    if isinstance(checked, list):
        raise PayloadInvalid(checked)
    data = checked.data
    errors: list[FieldError] = []
    if data["event_id"] != str(dead_letter.event_id):
        errors.append(FieldError("event_id", f"must stay {dead_letter.event_id}: a replay re-sends this event"))
    if data["event_type"] != dead_letter.event_type:
        errors.append(FieldError("event_type", f"must stay {dead_letter.event_type!r}"))
    if errors:
        raise PayloadInvalid(errors)
    return data


def lock_for_edit(*, dead_letter_id: int) -> DeadLetter:
    """Lock the row for the rest of the caller's transaction and check that it may be edited."""
    row = DeadLetter.objects.select_for_update().get(pk=dead_letter_id)
    if row.status not in EDITABLE_STATUSES:
        raise StateConflict(f"A {row.status} entry cannot be edited.")
    return row


def edit_payload(*, dead_letter_id: int, payload: Any, actor: Actor) -> DeadLetter:
    """Validate and save an edited payload; the first edit keeps the old payload in original_payload."""
    with transaction.atomic():
        row = lock_for_edit(dead_letter_id=dead_letter_id)
        data = validate_payload(payload=payload, dead_letter=row)
        if data == row.payload:
            return row
        if row.original_payload is None:
            row.original_payload = row.payload
        row.payload = data
        row.edited_at = timezone.now()
        row.edited_by = actor.user
        row.save(update_fields=["payload", "original_payload", "edited_at", "edited_by", "updated_at"])
    logger.info("dead letter %s edited by %s", dead_letter_id, actor.name, extra={"event": "dlq_edit"})
    return row


def discard(*, dead_letter_ids: Sequence[int], actor: Actor, reason: str) -> list[int]:
    """Discard pending or quarantined rows with a reason; returns the ids discarded (others are left alone)."""
    reason = (reason or "").strip()
    if not reason:
        raise ReplayError("A reason is required to discard dead letters.")
    now = timezone.now()
    with transaction.atomic():
        ids = list(
            DeadLetter.objects.select_for_update(skip_locked=True)
            .filter(pk__in=list(dead_letter_ids), status__in=DISCARDABLE_STATUSES)
            .values_list("id", flat=True)
        )
        DeadLetter.objects.filter(pk__in=ids).update(
            status=Status.DISCARDED,
            discard_reason=reason[:2000],
            discarded_at=now,
            discarded_by=actor.user,
            replay_claimed_at=None,
            updated_at=now,
        )
    if ids:
        logger.info("%d dead letters discarded by %s: %s", len(ids), actor.name, reason, extra={"event": "dlq_discard"})
    return ids


def purge(
    *,
    older_than: timedelta,
    include_replayed: bool = False,
    dry_run: bool = False,
    chunk_size: int = 1000,
    on_chunk: Callable[[int], None] | None = None,
) -> int:
    """Delete discarded (and optionally replayed) entries resolved more than `older_than` ago, in chunks.
    Returns how many were (or, with dry_run, would be) deleted."""
    cutoff = timezone.now() - older_than
    where = Q(status=Status.DISCARDED) & (
        Q(discarded_at__lt=cutoff) | Q(discarded_at__isnull=True, last_failed_at__lt=cutoff)
    )
    if include_replayed:
        where |= Q(status=Status.REPLAYED) & (
            Q(replayed_at__lt=cutoff) | Q(replayed_at__isnull=True, last_failed_at__lt=cutoff)
        )
    if dry_run:
        return DeadLetter.objects.filter(where).count()
    deleted = 0
    cursor = 0
    while True:
        ids = list(
            DeadLetter.objects.filter(where, pk__gt=cursor).order_by("id").values_list("id", flat=True)[:chunk_size]
        )
        if not ids:
            return deleted
        cursor = ids[-1]
        with transaction.atomic():
            ReplayAttempt.objects.filter(dead_letter_id__in=ids).delete()
            _, per_model = DeadLetter.objects.filter(where, pk__in=ids).delete()
        count = per_model.get(DeadLetter._meta.label, 0)
        deleted += count
        if on_chunk is not None:
            on_chunk(count)
