"""Replay of a Kafka topic by time range on the real stack (PostgreSQL, Redis, Kafka, a real Celery worker):
the window is cut by record timestamps, each event goes out once per job (duplicates in the source, cancel and
resume), re-routing uses the rules in force, the pace holds, bad requests are refused, and the admin shows the
job's progress and history.

Every test writes to its own scratch topics (deleted afterwards), so what is read back is exactly what the
replay wrote."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from django.conf import settings
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from kafka import KafkaProducer

from publisher import breaker, kafka_gateway
from publisher.models import TopicReplayEvent, TopicReplayJob
from publisher.publishing import build_records
from publisher.replay import Actor, topics
from routing.models import RoutingRule, Topic
from routing.services import invalidate_local_cache
from tests import factories
from tests.conftest import KafkaReader, WorkerProcess, create_topic

pytestmark = pytest.mark.django_db(transaction=True)

# The events' record timestamps: one a second from BASE, a day back (well inside any retention).
BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)


@pytest.fixture
def scratch() -> Iterator[Any]:
    """Makes uniquely named topics (the source with 3 partitions, so the window is cut per partition) and
    deletes them after the test."""
    made: list[str] = []

    def make(role: str, *, partitions: int = 1) -> str:
        name = f"test.topicreplay.{role}.{uuid.uuid4().hex[:8]}"
        if partitions == 1:
            create_topic(name)
        else:
            kafka_gateway.ensure_topics(names=[name], partitions=partitions, replication_factor=1)
        made.append(name)
        return name

    breaker.reset()
    invalidate_local_cache()
    yield make
    invalidate_local_cache()
    admin = kafka_gateway.admin_client()
    try:
        admin.delete_topics(made)
    except Exception:  # a scratch topic left behind is harmless
        pass
    finally:
        admin.close()


def produce(topic: str, events: list[dict[str, Any]], *, seconds: list[float]) -> None:
    """Write the events as the publisher does (JSON, its headers), each with the record timestamp BASE + s."""
    records, broken = build_records(
        events, {i: [topic] for i in range(len(events))}, {topic: "json"}, source="test", accepted_at=time.time()
    )
    assert not broken
    producer = KafkaProducer(bootstrap_servers=settings.KAFKA_BROKERS, acks="all")
    try:
        for record in records:
            at = int((BASE + timedelta(seconds=seconds[record.index])).timestamp() * 1000)
            producer.send(record.topic, key=record.key, value=record.value, headers=record.headers, timestamp_ms=at)
        producer.flush(timeout=20)
    finally:
        producer.close()


def attempts(n: int, **overrides: Any) -> list[dict[str, Any]]:
    return [factories.attempt(event_id=str(uuid.uuid4()), **overrides) for _ in range(n)]


def reader_for(*topics: str) -> KafkaReader:
    reader = KafkaReader(list(topics))
    for tp in reader.partitions:  # fresh topics: read from the beginning
        reader.consumer.seek(tp, 0)
    return reader


def event_ids(records: list[Any]) -> list[str]:
    return [record.headers["event_id"].decode() for record in records]


def iso(seconds: float) -> str:
    return (BASE + timedelta(seconds=seconds)).isoformat()


def _wait_for(predicate: Any, *, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def admin_user() -> tuple[User, Client]:
    user = User.objects.create_superuser(f"admin-{uuid.uuid4().hex[:6]}", "a@example.com", "pw")
    client = Client()
    client.force_login(user)
    return user, client


# ---------------------------------------------------------------------------------------------- command, --to


def test_replay_to_a_topic_sends_exactly_the_window_once(scratch: Any) -> None:
    source, target = scratch("src", partitions=3), scratch("dst")
    events = attempts(30)
    # Event 12 is in the source twice (as an at-least-once producer may write it).
    produce(source, [*events[:13], events[12], *events[13:]], seconds=[*range(13), 12.5, *range(13, 30)])

    call_command("replay_topic", source=source, since=iso(10), until=iso(20), to=target, rate=1000)

    records = reader_for(target).read(expected=10)
    assert sorted(event_ids(records)) == sorted(e["event_id"] for e in events[10:20])
    job = TopicReplayJob.objects.get()
    assert (job.status, job.replayed, job.duplicates, job.failed) == ("finished", 10, 1, 0)
    assert job.read == job.total == 11
    assert job.actor.startswith("manage.py replay_topic")
    by_id = {e["event_id"]: e for e in events}
    for record in records:
        event = by_id[record.headers["event_id"].decode()]
        assert record.key == event["user_id"].encode()  # key kept
        assert orjson.loads(record.value)["client_attempt_id"] == event["client_attempt_id"]  # value kept
        assert record.headers["content-type"] == b"application/json"  # headers kept
        assert record.headers["replay-job"] == str(job.pk).encode()
        topic, partition, offset = record.headers["replayed-from"].decode().rsplit("/", 2)
        assert topic == source and int(offset) >= job.bounds[partition][0]
    assert not TopicReplayEvent.objects.filter(job=job).exists()  # the seen-set goes with a finished job


def test_the_rate_paces_the_replay(scratch: Any) -> None:
    source, target = scratch("src"), scratch("dst")
    produce(source, attempts(20), seconds=[float(i) for i in range(20)])

    started = time.monotonic()
    call_command("replay_topic", source=source, since=iso(0), until=iso(60), to=target, rate=10)
    elapsed = time.monotonic() - started

    assert len(reader_for(target).read(expected=20)) == 20
    # 20 events at 10/s in chunks of 5: the last chunk may start 1.5 s after the first, not sooner.
    assert elapsed >= 1.5


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"source": "no.such.topic.anywhere", "since": "2d", "to": "dst"}, "Unknown source topic"),
        ({"source": "src", "since": "1d", "until": "2d", "to": "dst"}, "must be before"),
        ({"source": "src", "since": "2d", "through_rules": True, "to": "dst"}, "not both"),
        ({"source": "src", "since": "2d"}, "--through-rules or --to"),
        ({"source": "src", "since": "yesterday", "to": "dst"}, "--since: 'yesterday' is not a date"),
        ({"source": "src", "since": "2d", "to": "no.such.topic.anywhere"}, "Unknown target topic"),
        ({"source": "src", "since": "2d", "to": "src"}, "must differ from the source"),
    ],
)
def test_bad_requests_are_refused_with_a_clear_error(scratch: Any, options: dict[str, Any], message: str) -> None:
    names = {"src": scratch("src"), "dst": scratch("dst")}
    resolved = {key: names.get(value, value) if isinstance(value, str) else value for key, value in options.items()}
    with pytest.raises(CommandError, match=message):
        call_command("replay_topic", **resolved)
    assert not TopicReplayJob.objects.exists()


# ---------------------------------------------------------------------------------------------- worker, admin


def test_replay_through_the_current_rules_in_the_worker_with_progress_in_the_admin(
    celery_worker: WorkerProcess, scratch: Any
) -> None:
    source, training, everything = scratch("src", partitions=3), scratch("ml"), scratch("all")
    good, poor = attempts(6, quality=5), attempts(6, quality=2)
    activity = factories.activity(event_id=str(uuid.uuid4()))  # no rule for activities: unrouted
    produce(source, [*good, *poor, activity], seconds=[float(i) for i in range(13)])
    # The rules as fixed now: good attempts to the training topic, every attempt to another (and no others).
    RoutingRule.objects.all().delete()
    training_rule = RoutingRule.objects.create(
        name=f"good {uuid.uuid4().hex[:6]}", event_type="attempt", pattern={"quality": [{"numeric": [">=", 4]}]}
    )
    training_rule.destinations.add(Topic.objects.create(name=training))
    all_rule = RoutingRule.objects.create(name=f"all {uuid.uuid4().hex[:6]}", event_type="attempt", pattern={})
    all_rule.destinations.add(Topic.objects.create(name=everything))
    user, client = admin_user()

    response = client.post(
        reverse("admin:publisher_topicreplayjob_add"),
        {"source_topic": source, "since": iso(0), "until": iso(60), "through_rules": "on", "rate": "100"},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    job = TopicReplayJob.objects.get()
    assert job.created_by == user and job.through_rules
    _wait_for(lambda: TopicReplayJob.objects.get(pk=job.pk).status == "finished", what="the job to finish")

    assert sorted(event_ids(reader_for(training).read(expected=6))) == sorted(e["event_id"] for e in good)
    all_records = reader_for(everything).read(expected=12)
    assert sorted(event_ids(all_records)) == sorted(e["event_id"] for e in good + poor)
    assert all(r.headers["replayed-from"].decode().startswith(f"{source}/") for r in all_records)
    job.refresh_from_db()
    assert (job.read, job.total, job.replayed, job.unrouted, job.failed) == (13, 13, 12, 1, 0)
    page = client.get(response["Location"]).content.decode()
    assert "13 / 13" in page and "finished" in page and "through the current routing rules" in page
    started = LogEntry.objects.get(user=user, content_type__model="topicreplayjob", object_id=str(job.pk))
    assert "Started topic replay" in started.get_change_message()
    listing = client.get(reverse("admin:publisher_topicreplayjob_changelist")).content.decode()
    assert f"Topic replay #{job.pk} of {source}" in listing


def test_cancel_midway_then_resume_sends_no_event_twice(celery_worker: WorkerProcess, scratch: Any) -> None:
    source, target = scratch("src", partitions=3), scratch("dst")
    events = attempts(40)
    produce(source, events, seconds=[float(i) for i in range(40)])
    _, client = admin_user()
    response = client.post(
        reverse("admin:publisher_topicreplayjob_add"),
        {"source_topic": source, "since": iso(0), "until": iso(60), "target_topic": target, "rate": "8"},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    job = TopicReplayJob.objects.get()
    _wait_for(lambda: TopicReplayJob.objects.get(pk=job.pk).replayed >= 8, what="the job to make progress")
    page = client.get(reverse("admin:publisher_topicreplayjob_change", args=[job.pk])).content.decode()
    assert "running" in page and "Cancel job" in page

    client.post(reverse("admin:publisher_topicreplayjob_cancel", args=[job.pk]))
    _wait_for(lambda: TopicReplayJob.objects.get(pk=job.pk).status == "cancelled", timeout=20, what="the cancel")
    job.refresh_from_db()
    assert 8 <= job.replayed < 40
    partial = reader_for(target).read(expected=job.replayed)
    assert len(partial) == job.replayed
    assert "Resume job" in client.get(reverse("admin:publisher_topicreplayjob_change", args=[job.pk])).content.decode()

    client.post(reverse("admin:publisher_topicreplayjob_resume", args=[job.pk]))
    _wait_for(lambda: TopicReplayJob.objects.get(pk=job.pk).status == "finished", what="the resumed job to finish")

    records = reader_for(target).read(expected=40)
    assert sorted(event_ids(records)) == sorted(e["event_id"] for e in events)  # all of them, none twice
    job.refresh_from_db()
    assert (job.read, job.replayed, job.duplicates, job.failed) == (40, 40, 0, 0)
    entries = LogEntry.objects.filter(content_type__model="topicreplayjob", object_id=str(job.pk)).order_by("id")
    history = [entry.get_change_message().split(":")[0] for entry in entries]
    assert history == ["Started topic replay", "Cancelled topic replay", "Resumed topic replay"]


def test_the_admin_refuses_a_bad_request_and_users_without_the_permission(scratch: Any) -> None:
    source = scratch("src")
    _, client = admin_user()
    response = client.post(
        reverse("admin:publisher_topicreplayjob_add"),
        {"source_topic": source, "since": "1d", "until": "2d", "target_topic": "x", "rate": "10"},
    )
    assert response.status_code == 200
    assert "must be before" in response.content.decode()
    staff = User.objects.create_user("staff-only", password="pw", is_staff=True)
    other = Client()
    other.force_login(staff)
    assert other.get(reverse("admin:publisher_topicreplayjob_add")).status_code == 403
    assert not TopicReplayJob.objects.exists()


def test_a_cancelled_job_resumes_from_the_command_and_a_finished_one_does_not(scratch: Any) -> None:
    source, target = scratch("src"), scratch("dst")
    events = attempts(5)
    produce(source, events, seconds=[float(i) for i in range(5)])
    job = topics.start_topic_replay(
        source_topic=source,
        since=BASE,
        until=BASE + timedelta(minutes=1),
        through_rules=False,
        target_topic=target,
        rate=100,
        actor=Actor.command("test"),
        queue=False,
    )
    assert topics.cancel_topic_replay(job_id=job.pk).status == "cancelled"  # queued: cancelled at once

    call_command("replay_topic", resume=job.pk)

    assert sorted(event_ids(reader_for(target).read(expected=5))) == sorted(e["event_id"] for e in events)
    with pytest.raises(CommandError, match=f"Topic replay #{job.pk} is finished"):
        call_command("replay_topic", resume=job.pk)
    with pytest.raises(CommandError, match="no topic replay job #999999"):
        call_command("replay_topic", resume=999999)


class FlakyProducer:
    """The real producer, except that sends of the records replayed from the given source offsets fail, as they do
    when a broker connection drops (outcome unknown) or leadership moves (certainly not written)."""

    def __init__(self, real: Any, failures: dict[int, Exception]) -> None:
        self.real, self.failures = real, failures

    def send(self, topic: str, **kwargs: Any) -> Any:
        origin = dict(kwargs["headers"])["replayed-from"].decode()
        failure = self.failures.get(int(origin.rsplit("/", 1)[1]))
        if failure is not None:
            raise failure
        return self.real.send(topic, **kwargs)

    def flush(self, timeout: float | None = None) -> None:
        self.real.flush(timeout=timeout)


def test_sends_that_failed_are_retried_later_and_nothing_goes_twice(
    scratch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kafka.errors import KafkaConnectionError, NotLeaderForPartitionError

    source, target = scratch("src"), scratch("dst")
    events = attempts(6)
    produce(source, events, seconds=[float(i) for i in range(6)])
    job = topics.start_topic_replay(
        source_topic=source,
        since=BASE,
        until=BASE + timedelta(minutes=1),
        through_rules=False,
        target_topic=target,
        rate=1000,
        actor=Actor.command("test"),
        queue=False,
    )
    real = kafka_gateway.get_producer()
    failures: dict[int, Exception] = {1: KafkaConnectionError("dropped"), 3: NotLeaderForPartitionError("moved")}
    monkeypatch.setattr(kafka_gateway, "get_producer", lambda: FlakyProducer(real, failures))

    outcome = topics.run_topic_slice(job_id=job.pk, token=job.run_token)

    job.refresh_from_db()
    assert outcome.next_token and outcome.countdown > 0  # the job goes on a little later
    assert "retrying" in job.error
    assert (job.status, job.replayed, job.failed, job.positions) == ("running", 4, 0, {"0": 1})
    monkeypatch.undo()
    assert topics.run_topic_slice(job_id=job.pk, token=outcome.next_token) == topics.SliceOutcome()

    assert sorted(event_ids(reader_for(target).read(expected=6))) == sorted(e["event_id"] for e in events)
    job.refresh_from_db()
    assert (job.status, job.read, job.replayed, job.duplicates, job.failed) == ("finished", 6, 6, 0, 0)
