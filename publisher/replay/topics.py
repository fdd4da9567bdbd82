"""Replay a Kafka topic by time range (archive and replay): read the records a topic holds for [since, until),
and send each event again, either re-routed through the current rules or copied to a named topic. Typical use:
after fixing a rule, send last week's attempts to ml.training_events again.

A replay is a TopicReplayJob, run like the dead-letter replay jobs (publisher.replay.jobs): slices of at most
JOB_SLICE_SECONDS, each a Celery task holding the job's run token, paced by a TokenBucket, stopping between
chunks on Cancel. `manage.py replay_topic` runs the same slices in the foreground (or queues the job).

- The window: the first slice fixes, per partition, the offset range [offsets_for_times(since),
  offsets_for_times(until) or the end offset then); records appended after that are not part of the job. Records
  in range whose timestamp falls outside the window (producers' clocks disagree) are counted and left out.
- Resumable: `positions` (the next offset per partition) is saved after every chunk; a resumed, cancelled or
  failed job, and a redelivered slice, go on from there.
- At most once per event id per job: before a record is sent its event id (the `event_id` header, else
  topic/partition/offset) is claimed in the job's seen-set (TopicReplayEvent, one INSERT ... ON CONFLICT DO
  NOTHING per chunk), so an event twice in the source, or re-read after a resume, goes out once. A send that
  failed without writing (a retryable error, nothing acknowledged, and Kafka says the record is not there) gives
  its claim back and the job retries from that offset a little later. A process killed between the claim and
  the ack leaves its claims: those events are not sent again by this job (at most once, as promised).
- Records keep their key; copied records keep their value and headers, re-routed ones are serialized in each
  destination's format with the usual headers. Both get `replayed-from: topic/partition/offset` and
  `replay-job: <id>`, and a new timestamp (their original ingestion time stays in `ingested_at`).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from celery import Task
from django.conf import settings
from django.db import DatabaseError, InterfaceError, connection, transaction
from django.db.models import F
from django.utils import timezone
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError, MessageSizeTooLargeError

from events.serialization import decode_value
from publisher import kafka_gateway
from publisher.errors import error_class, is_outage, is_retryable, maybe_written
from publisher.models import TopicReplayEvent, TopicReplayJob
from publisher.publishing import CLOCK_MARGIN_SECONDS, Record, await_acks, build_records
from publisher.replay.engine import _ensure_breaker_closed, missing_topics
from publisher.replay.jobs import JOB_SLICE_SECONDS
from publisher.replay.values import Actor, KafkaUnavailable, ReplayError, TokenBucket, UnknownTopic, chunk_size_for
from publisher.retry_budget import ACK_GRACE_SECONDS
from publisher.tasks import publisher_task
from routing.services import current_routing

logger = logging.getLogger(__name__)

Status = TopicReplayJob.Status
REPLAY_HEADERS = ("replayed-from", "replay-job")
RETRY_DELAY_SECONDS = 10.0
# A running job writes its progress at least this often, so a job whose process died can be told apart.
HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 120.0
_RECORD_OVERHEAD = 128


class TopicReplayRefused(ReplayError):
    """The replay was refused as asked (bad window, unknown topic, ...); the message names the problem."""


# ------------------------------------------------------------------------------------------------ start / stop


def validate_request(
    *, source_topic: str, since: datetime, until: datetime, through_rules: bool, target_topic: str, rate: float
) -> None:
    """Raise TopicReplayRefused naming the first problem with a replay request."""
    if through_rules and target_topic:
        raise TopicReplayRefused("Choose one destination: through the current rules or a topic, not both.")
    if not through_rules and not target_topic:
        raise TopicReplayRefused("Choose a destination: through the current rules, or a topic to copy to.")
    if not rate > 0:
        raise TopicReplayRefused(f"The rate must be positive (got {rate:g}).")
    if since >= until:
        raise TopicReplayRefused(f"'since' ({since.isoformat()}) must be before 'until' ({until.isoformat()}).")
    if target_topic and target_topic == source_topic:
        raise TopicReplayRefused(f"The target topic must differ from the source ({source_topic!r}).")
    try:
        known = kafka_gateway.list_topics()
    except Exception as exc:
        raise TopicReplayRefused(f"Cannot list Kafka's topics to check the request: {exc!r}") from None
    for role, name in (("source", source_topic), ("target", target_topic)):
        if name and name not in known:
            raise TopicReplayRefused(f"Unknown {role} topic {name!r}: the broker has no such topic.")


def start_topic_replay(
    *,
    source_topic: str,
    since: datetime,
    until: datetime,
    through_rules: bool,
    target_topic: str,
    rate: float,
    actor: Actor,
    queue: bool = True,
) -> TopicReplayJob:
    """Check the request, create the job and (with `queue`) hand its first slice to the workers after commit."""
    validate_request(
        source_topic=source_topic,
        since=since,
        until=until,
        through_rules=through_rules,
        target_topic=target_topic,
        rate=rate,
    )
    job = TopicReplayJob.objects.create(
        source_topic=source_topic,
        since=since,
        until=until,
        through_rules=through_rules,
        target_topic=target_topic,
        rate=rate,
        actor=actor.name[:150],
        created_by=actor.user,
        run_token=uuid.uuid4().hex,
    )
    if queue:
        _enqueue_after_commit(job_id=job.pk, token=job.run_token)
    logger.info("topic replay %s of %s queued by %s", job.pk, source_topic, actor.name, extra={"event": "topic_replay"})
    return job


def cancel_topic_replay(*, job_id: int) -> TopicReplayJob:
    """Ask a job to stop: a queued job (or one whose process died) is cancelled at once, a running one at its next
    chunk. A cancelled job can be resumed."""
    now = timezone.now()
    jobs = TopicReplayJob.objects.filter(pk=job_id)
    jobs.filter(status=Status.QUEUED).update(cancelled=True, status=Status.CANCELLED, finished_at=now)
    stale = now - timedelta(seconds=STALE_SECONDS)
    jobs.filter(status=Status.RUNNING, updated_at__lt=stale).update(
        cancelled=True, status=Status.CANCELLED, finished_at=now, error="stopped: its process had stopped working"
    )
    jobs.filter(status=Status.RUNNING).update(cancelled=True)
    return TopicReplayJob.objects.get(pk=job_id)


def resume_topic_replay(*, job_id: int, queue: bool = True) -> TopicReplayJob:
    """Continue a cancelled or failed job from its saved offsets (compare-and-set on its status)."""
    token = uuid.uuid4().hex
    resumed = TopicReplayJob.objects.filter(pk=job_id, status__in=[Status.CANCELLED, Status.FAILED]).update(
        status=Status.QUEUED, cancelled=False, run_token=token, error="", finished_at=None, updated_at=timezone.now()
    )
    job = TopicReplayJob.objects.get(pk=job_id)
    if not resumed:
        raise TopicReplayRefused(f"Topic replay #{job_id} is {job.status}: only a cancelled or failed job resumes.")
    if queue:
        _enqueue_after_commit(job_id=job_id, token=token)
    return job


@publisher_task(name="publisher.replay_topic")
def replay_topic(self: Task, job_id: int, token: str) -> None:
    """One slice of a topic replay (run_topic_slice); it queues the next slice itself."""
    outcome = run_topic_slice(job_id=job_id, token=token)
    if outcome.next_token:
        _enqueue_after_commit(job_id=job_id, token=outcome.next_token, countdown=outcome.countdown)


def _enqueue_after_commit(*, job_id: int, token: str, countdown: float = 0) -> None:
    transaction.on_commit(
        lambda: replay_topic.apply_async(kwargs={"job_id": job_id, "token": token}, countdown=countdown or None)
    )


# ------------------------------------------------------------------------------------------------ slices


@dataclass(frozen=True)
class SliceOutcome:
    next_token: str | None = None  # the job goes on: run the next slice with this token
    countdown: float = 0.0


def run_topic_slice(
    *,
    job_id: int,
    token: str,
    budget_seconds: float | None = JOB_SLICE_SECONDS,
    should_stop: Callable[[], bool] | None = None,
) -> SliceOutcome:
    """Work on a job for up to `budget_seconds` (None: until done or stopped). Only the holder of the job's
    current token works; the outcome says whether (and when) to go on, with a new token already saved."""
    job = TopicReplayJob.objects.filter(pk=job_id).first()
    if job is None or job.run_token != token or not job.is_active:
        return SliceOutcome()
    if job.cancelled:
        _end(job_id, token, Status.CANCELLED)
        return SliceOutcome()
    deadline = None if budget_seconds is None else time.monotonic() + budget_seconds

    def stop() -> bool:
        return bool(should_stop and should_stop()) or TopicReplayJob.objects.filter(pk=job_id, cancelled=True).exists()

    try:
        with contextlib.closing(kafka_gateway.topic_reader(max_poll_records=chunk_size_for(job.rate))) as consumer:
            if not job.bounds:
                _fix_window(job, consumer)
            elif job.status == Status.QUEUED:
                _mark_running(job)
            result = _Run(job, consumer, token=token, deadline=deadline, stop=stop).run()
    except (KafkaUnavailable, KafkaError, OSError) as exc:
        return _go_on(job_id=job_id, token=token, countdown=RETRY_DELAY_SECONDS, note=f"waiting for Kafka: {exc}")
    except (DatabaseError, InterfaceError):
        raise  # the task retries; the same token resumes the job
    except Exception as exc:
        TopicReplayJob.objects.filter(pk=job_id, run_token=token).update(
            status=Status.FAILED, error=repr(exc)[:4000], finished_at=timezone.now()
        )
        logger.exception("topic replay %s failed", job_id)
        return SliceOutcome()
    if result == "finished":
        if _end(job_id, token, Status.FINISHED):
            TopicReplayEvent.objects.filter(job_id=job_id).delete()  # a finished job never runs again
        return SliceOutcome()
    if result == "stopped":
        _end(job_id, token, Status.CANCELLED)
        return SliceOutcome()
    countdown = RETRY_DELAY_SECONDS if result.startswith("retry:") else 0.0
    return _go_on(job_id=job_id, token=token, countdown=countdown, note=result.removeprefix("retry:"))


def _end(job_id: int, token: str, status: str) -> bool:
    """Fenced by the token: a slice that lost the job (cancelled as stale, then resumed) must not end it."""
    now = timezone.now()
    return bool(
        TopicReplayJob.objects.filter(pk=job_id, run_token=token).update(status=status, finished_at=now, updated_at=now)
    )


def _go_on(*, job_id: int, token: str, countdown: float, note: str) -> SliceOutcome:
    new_token = uuid.uuid4().hex
    if TopicReplayJob.objects.filter(pk=job_id, run_token=token).update(run_token=new_token, error=note[:4000]):
        return SliceOutcome(next_token=new_token, countdown=countdown)
    return SliceOutcome()


def _mark_running(job: TopicReplayJob) -> None:
    job.status = Status.RUNNING
    job.started_at = job.started_at or timezone.now()
    job.save(update_fields=["status", "started_at", "updated_at"])


def _fix_window(job: TopicReplayJob, consumer: KafkaConsumer) -> None:
    """The first slice: each partition's offset range for the window, by record timestamp."""
    numbers = sorted(consumer.partitions_for_topic(job.source_topic) or [])
    if not numbers:
        raise TopicReplayRefused(f"Unknown source topic {job.source_topic!r}: the broker has no such topic.")
    partitions = [TopicPartition(job.source_topic, n) for n in numbers]
    since_ms, until_ms = _millis(job.since), _millis(job.until)
    starts = consumer.offsets_for_times(dict.fromkeys(partitions, since_ms))
    stops = consumer.offsets_for_times(dict.fromkeys(partitions, until_ms))
    ends = consumer.end_offsets(partitions)
    bounds: dict[str, list[int]] = {}
    for tp in partitions:
        start, stop = starts.get(tp), stops.get(tp)
        first = ends[tp] if start is None else start.offset
        last = ends[tp] if stop is None else stop.offset
        bounds[str(tp.partition)] = [first, max(first, last)]
    job.bounds = bounds
    job.positions = {p: b[0] for p, b in bounds.items()}
    job.high_water = dict(job.positions)
    job.total = sum(b[1] - b[0] for b in bounds.values())
    _mark_running(job)
    job.save(update_fields=["bounds", "positions", "high_water", "total"])


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


# ------------------------------------------------------------------------------------------------ one run


@dataclass
class _Item:
    record: Any  # a kafka ConsumerRecord
    event_id: str
    out: list[Record] = field(default_factory=list)
    error: BaseException | None = None


@dataclass
class _Counts:
    read: int = 0
    replayed: int = 0
    duplicates: int = 0
    unrouted: int = 0
    out_of_window: int = 0
    failed: int = 0
    rewind: dict[int, int] = field(default_factory=dict)  # partition -> offset to read again from
    note: str = ""


class _Run:
    """One slice's reading loop: poll a chunk, claim, pace, send, settle, save progress; until done or told."""

    def __init__(
        self, job: TopicReplayJob, consumer: KafkaConsumer, *, token: str, deadline: float | None, stop: Any
    ) -> None:
        self.job, self.consumer, self.token, self.deadline, self.stop = job, consumer, token, deadline, stop
        self.ends = {int(p): b[1] for p, b in job.bounds.items()}
        self.positions = {int(p): int(o) for p, o in job.positions.items()}
        self.high_water = {int(p): int(o) for p, o in (job.high_water or job.positions).items()}
        self.bucket = TokenBucket(job.rate)
        self.since_ms, self.until_ms = _millis(job.since), _millis(job.until)
        self.saved_at = time.monotonic()

    def open_partitions(self) -> list[TopicPartition]:
        return [TopicPartition(self.job.source_topic, p) for p, o in self.positions.items() if o < self.ends[p]]

    def run(self) -> str:
        """'finished', 'stopped', 'continue' (out of time) or 'retry:<why>' (Kafka failed some sends)."""
        partitions = self.open_partitions()
        self.consumer.assign(partitions)
        for tp in partitions:
            self.consumer.seek(tp, self.positions[tp.partition])
        while True:
            if not self.open_partitions():
                return "finished"
            if self.stop():
                return "stopped"
            if self.deadline is not None and time.monotonic() >= self.deadline:
                return "continue"
            _ensure_breaker_closed()
            counts = self.chunk()
            if not self.save(counts):
                return "stopped"  # another run holds the job now
            if counts.rewind:
                return f"retry:{counts.note}"

    def chunk(self) -> _Counts:
        batch = self.consumer.poll(timeout_ms=1000, max_records=chunk_size_for(self.job.rate))
        counts = _Counts()
        records = []
        for tp, polled in batch.items():
            for record in polled:
                if self.positions[tp.partition] <= record.offset < self.ends[tp.partition]:
                    records.append(record)
        fresh = [r for r in records if r.offset >= self.high_water[r.partition]]
        counts.read = len(fresh)
        inside = []
        for record in records:
            if self.since_ms <= record.timestamp < self.until_ms:
                inside.append(record)
            elif record.offset >= self.high_water[record.partition]:
                counts.out_of_window += 1
        if inside:
            _replay_records(self.job, inside, bucket=self.bucket, counts=counts, high_water=self.high_water)
        for tp in self.open_partitions():
            moved = self.consumer.position(tp)
            if moved is not None:
                self.positions[tp.partition] = min(max(self.positions[tp.partition], moved), self.ends[tp.partition])
        for partition, offset in counts.rewind.items():
            self.positions[partition] = min(self.positions[partition], offset)
        still_open = set(self.open_partitions())
        self.consumer.pause(*(tp for tp in self.consumer.assignment() if tp not in still_open))  # read to its end
        for record in records:
            self.high_water[record.partition] = max(self.high_water[record.partition], record.offset + 1)
        return counts

    def save(self, counts: _Counts) -> bool:
        """Progress and the resume point, fenced by the run token. Written when something happened, and at least
        every HEARTBEAT_SECONDS (so a job whose process died shows as stale)."""
        changed = counts.read or counts.rewind or counts.replayed or counts.duplicates
        if not changed and time.monotonic() - self.saved_at < HEARTBEAT_SECONDS:
            return True
        self.saved_at = time.monotonic()
        return bool(
            TopicReplayJob.objects.filter(pk=self.job.pk, run_token=self.token).update(
                positions={str(p): o for p, o in self.positions.items()},
                high_water={str(p): o for p, o in self.high_water.items()},
                read=F("read") + counts.read,
                replayed=F("replayed") + counts.replayed,
                duplicates=F("duplicates") + counts.duplicates,
                unrouted=F("unrouted") + counts.unrouted,
                out_of_window=F("out_of_window") + counts.out_of_window,
                failed=F("failed") + counts.failed,
                updated_at=timezone.now(),
            )
        )


# ------------------------------------------------------------------------------------------------ one chunk


def _event_id(record: Any) -> str:
    for name, value in record.headers or ():
        if name == "event_id" and value:
            return bytes(value).decode(errors="replace")[:300]
    return f"{record.topic}/{record.partition}/{record.offset}"


def _claim(job_id: int, event_ids: Sequence[str]) -> set[str]:
    """Add the ids to the job's seen-set; returns those that were not in it yet (this chunk may send them)."""
    table = TopicReplayEvent._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (job_id, event_id) SELECT %s, unnest(%s::text[]) "
            "ON CONFLICT (job_id, event_id) DO NOTHING RETURNING event_id",
            [job_id, list(event_ids)],
        )
        return {row[0] for row in cursor.fetchall()}


def _replay_records(
    job: TopicReplayJob, records: Sequence[Any], *, bucket: TokenBucket, counts: _Counts, high_water: dict[int, int]
) -> None:
    """Claim, pace, send and settle the records of one chunk that are inside the window."""
    items = [_Item(record, _event_id(record)) for record in records]
    claimed = _claim(job.pk, list(dict.fromkeys(item.event_id for item in items)))
    taken: list[_Item] = []
    for item in items:
        if item.event_id in claimed:
            claimed.discard(item.event_id)  # the first record of an event id in the chunk takes it
            taken.append(item)
        elif item.record.offset >= high_water[item.record.partition]:
            counts.duplicates += 1
    if not taken:
        return
    if job.through_rules:
        _plan_rerouted(job, taken, counts)
    else:
        _plan_copies(job, taken)
    planned = [item for item in taken if item.out and item.error is None]
    bucket.acquire(max(1, len(planned)))
    started = time.time()
    _send(planned)
    _settle(job, taken, counts, sent_since=started)


def _replay_headers(record: Any, job: TopicReplayJob) -> list[tuple[str, bytes]]:
    origin = f"{record.topic}/{record.partition}/{record.offset}"
    return [("replayed-from", origin.encode()), ("replay-job", str(job.pk).encode())]


def _plan_copies(job: TopicReplayJob, items: Sequence[_Item]) -> None:
    for index, item in enumerate(items):
        record = item.record
        kept = [(name, bytes(value or b"")) for name, value in record.headers or () if name not in REPLAY_HEADERS]
        headers = kept + _replay_headers(record, job)
        item.out = [Record(index, job.target_topic, record.key or b"", record.value or b"", headers, "")]


def _plan_rerouted(job: TopicReplayJob, items: Sequence[_Item], counts: _Counts) -> None:
    """Decode each event, route it with the rules in force now, serialize it for each destination."""
    snapshot = current_routing()
    for index, item in enumerate(items):
        headers = {name: bytes(value or b"").decode(errors="replace") for name, value in item.record.headers or ()}
        try:
            event = decode_value(
                item.record.value or b"",
                content_type=headers.get("content-type", "application/json"),
                schema=headers.get("schema", ""),
            )
            topics = snapshot.route(event).topics
            if not topics:
                counts.unrouted += 1
                continue
            records, broken = build_records(
                [event],
                {0: list(topics)},
                snapshot.topic_formats,
                source=headers.get("source", ""),
                accepted_at=_ingested_at(headers.get("ingested_at"), item.record.timestamp),
            )
            if broken:
                raise broken[0].error or ValueError("cannot serialize the event")
        except Exception as exc:
            item.error = exc
            continue
        for record in records:
            record.index = index
            record.headers = [*record.headers, *_replay_headers(item.record, job)]
            record.header_block = None
        item.out = records


def _ingested_at(text: str | None, timestamp_ms: int) -> float:
    if text:
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    return timestamp_ms / 1000.0


def _send(items: Sequence[_Item]) -> None:
    """Send every planned record, then wait for every acknowledgement (failures land on the records)."""
    records = [record for item in items for record in item.out]
    if not records:
        return
    try:
        missing = missing_topics(r.topic for r in records)
        if missing:  # the cached list may predate a topic created a moment ago: ask the broker itself
            missing -= kafka_gateway.list_topics()
        limits = kafka_gateway.max_message_bytes({r.topic for r in records})
        producer = kafka_gateway.get_producer()
    except Exception as exc:  # no producer: nothing was sent
        for record in records:
            record.error = exc
        return
    sent: list[tuple[Record, Any]] = []
    for record in records:
        size = _RECORD_OVERHEAD + len(record.key) + len(record.value) + sum(len(k) + len(v) for k, v in record.headers)
        if record.topic in missing:
            record.error = UnknownTopic(f"topic {record.topic!r} does not exist on the broker")
        elif record.topic in limits and size > limits[record.topic]:
            record.error = MessageSizeTooLargeError(f"about {size} bytes, over max.message.bytes of {record.topic}")
        else:
            try:
                future = producer.send(record.topic, key=record.key or None, value=record.value, headers=record.headers)
            except Exception as exc:
                record.error = exc
            else:
                sent.append((record, future))
    if sent:
        with contextlib.suppress(Exception):  # a timeout or failure shows on each future
            producer.flush(timeout=float(settings.KAFKA_PRODUCER_TIMEOUT) + ACK_GRACE_SECONDS)
    await_acks(sent, timeout=0.0)
    # As publishing does: a producer that acknowledged nothing, or hit a fatal error, is replaced before the retry.
    if sent and all(record.error is not None and is_outage(record.error) for record, _ in sent):
        kafka_gateway.reset_producer()
    elif kafka_gateway.producer_is_broken():
        kafka_gateway.reset_producer()
        kafka_gateway.forget_topic_limits()


def _settle(job: TopicReplayJob, items: Sequence[_Item], counts: _Counts, *, sent_since: float) -> None:
    """Count each event; give back the claims of sends that certainly wrote nothing, and rewind to retry them."""
    doubtful: list[_Item] = []
    retry: list[_Item] = []
    for item in items:
        errors = [record.error for record in item.out if record.error is not None]
        if item.error is None and not errors:
            counts.replayed += 1 if item.out else 0
            continue
        if item.error is not None or len(errors) < len(item.out) or not all(is_retryable(e) for e in errors):
            _count_failure(job, item, item.error or errors[0], counts)
        elif any(maybe_written(e) for e in errors):
            doubtful.append(item)
        else:
            retry.append(item)
    if doubtful:
        found = kafka_gateway.find_written(
            topics={r.topic for item in doubtful for r in item.out},
            since=sent_since - CLOCK_MARGIN_SECONDS,
            event_ids={item.event_id for item in doubtful},
        )
        for item in doubtful:
            if found is None:  # cannot tell: keep the claim (at most once)
                _count_failure(job, item, item.out[0].error or RuntimeError("unknown"), counts)
            elif all((item.event_id, r.topic) in found for r in item.out):
                counts.replayed += 1
            else:
                retry.append(item)
    if retry:
        TopicReplayEvent.objects.filter(job_id=job.pk, event_id__in=[item.event_id for item in retry]).delete()
        for item in retry:
            partition, offset = item.record.partition, item.record.offset
            counts.rewind[partition] = min(counts.rewind.get(partition, offset), offset)
        first = next(r.error for r in retry[0].out if r.error is not None)
        counts.note = f"{len(retry)} sends failed ({error_class(first)}: {first}); retrying"


def _count_failure(job: TopicReplayJob, item: _Item, error: BaseException, counts: _Counts) -> None:
    counts.failed += 1
    logger.warning(
        "topic replay %s: %s/%s/%s not replayed: %s: %s",
        job.pk,
        item.record.topic,
        item.record.partition,
        item.record.offset,
        error_class(error),
        error,
        extra={"event": "topic_replay_failed"},
    )
