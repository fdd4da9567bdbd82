"""The delivery promise at its edges, on the real stack: every accepted event ends in each destination topic or in
the dead-letter queue, in bounded time, whatever it contains and whatever refuses it on the way."""

from __future__ import annotations

import base64
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from django.conf import settings
from django.test import Client, override_settings

from config.redis import get_redis
from events.schema import validate_event
from publisher import breaker, kafka_gateway, poison, publishing, queue
from publisher.models import DeadLetter, RetryPolicy
from publisher.publishing import publish_events
from publisher.services import enqueue_events
from routing.models import RoutingRule, Topic
from tests import factories
from tests.conftest import KafkaReader, WorkerProcess, create_topic

pytestmark = pytest.mark.django_db(transaction=True)


def route(activity_type: str, topic_name: str) -> None:
    topic, _ = Topic.objects.get_or_create(name=topic_name)
    rule = RoutingRule.objects.create(
        name=f"test {activity_type}", event_type="activity", pattern={"activity_type": [activity_type]}, priority=1
    )
    rule.destinations.set([topic])


def normalized(event: dict[str, Any]) -> dict[str, Any]:
    checked = validate_event(event)
    assert not isinstance(checked, list), checked
    return dict(checked.data)


def wait_for(condition: Any, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(f"not within {timeout} s: {what}")


def count_in_kafka(reader: KafkaReader, event_id: str, *, timeout: float, settle: float = 2.0) -> int:
    """How often `event_id` was written to the reader's topics: read until it appears, then `settle` more."""
    seen = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for records in reader.consumer.poll(timeout_ms=300).values():
            seen += sum(1 for r in records if dict(r.headers or []).get("event_id", b"").decode() == event_id)
        if seen and deadline - time.monotonic() > settle:
            deadline = time.monotonic() + settle
    return seen


def publish_list_length() -> int:
    return int(get_redis().llen("publish"))


@pytest.fixture
def own_redis_db() -> Iterator[str]:
    """A Redis database of this test's own, for this process and the worker it starts: the suite's shared
    worker must not take the task under test."""
    import config.redis
    from publisher import breaker as breaker_module

    url = settings.REDIS_URL.rsplit("/", 1)[0] + "/12"
    redis_client = get_redis().__class__.from_url(url)
    redis_client.flushdb()

    def forget_clients() -> None:
        config.redis._client = None
        breaker_module._breaker = None
        breaker_module._forget()

    with override_settings(REDIS_URL=url, CELERY_BROKER_URL=url):
        forget_clients()
        try:
            yield url
        finally:
            redis_client.flushdb()
    forget_clients()


def enqueue_here(events: list[dict[str, Any]]) -> None:
    """Enqueue a publish task into this process's Redis (REDIS_URL) through Celery's public API."""
    from config.celery import app
    from publisher.tasks import publish_events as publish_task

    with app.connection_for_write(settings.REDIS_URL) as connection:
        publish_task.apply_async(
            kwargs={"events": events, "source": "test", "accepted_at": time.time()}, connection=connection
        )


# ---------------------------------------------------------------- data the database refuses


def test_a_dead_letter_the_database_refuses_is_quarantined_and_holds_nothing_back(
    default_routing: None, celery_worker: WorkerProcess
) -> None:
    """An event with NUL characters (accepted before validation refused them, or replayed) that fails
    permanently: PostgreSQL text refuses NUL, and the task used to be deferred every 2 s forever, holding back
    every other dead letter of its batch. Now: stored sanitized and quarantined, the others stored as they are."""
    create_topic("test.small-2000", **{"max.message.bytes": "2000"})
    route("too-big", "test.small-2000")
    time.sleep(2.5)  # a rule reaches running workers within 2 s
    blob = base64.b64encode(os.urandom(4500)).decode()  # ~6 KB that no codec compresses under the limit
    marker = uuid.uuid4().hex[:8]
    dirty = normalized(factories.activity(activity_type="too-big", properties={"blob": blob}))
    dirty["user_id"] = f"learner\x00{marker}"
    dirty["properties"] = {"blob": blob, "note\x00": "a\x00b"}
    clean = normalized(factories.activity(activity_type="too-big", properties={"blob": blob}))
    queued_before = queue.depth()
    enqueue_events(events=[dirty, clean], source="test", accepted_at=time.time())

    def stored() -> bool:
        return DeadLetter.objects.filter(event_id__in=[dirty["event_id"], clean["event_id"]]).count() == 2

    wait_for(stored, timeout=60, what="both dead letters stored")
    row = DeadLetter.objects.get(event_id=dirty["event_id"])
    assert row.status == DeadLetter.Status.QUARANTINED
    assert "NUL" in row.quarantine_reason or "0x00" in row.quarantine_reason, row.quarantine_reason
    assert row.reason == DeadLetter.Reason.PERMANENT_ERROR
    original = orjson.loads(base64.b64decode(row.original_b64))
    assert original["user_id"] == dirty["user_id"]  # the event exactly as accepted, NUL included
    assert original["properties"] == dirty["properties"]
    assert row.user_id == f"learner\\u0000{marker}"  # readable in the admin
    other = DeadLetter.objects.get(event_id=clean["event_id"])
    assert other.status == DeadLetter.Status.PENDING and not other.quarantine_reason
    assert other.payload == clean
    wait_for(lambda: queue.depth() <= queued_before, timeout=30, what="the queued-events count drained")
    wait_for(lambda: publish_list_length() == 0, timeout=30, what="no task left in the queue")
    assert "publish deferred" not in celery_worker.output()[-20000:]


def test_quarantined_entries_show_why_in_the_admin(admin_client: Client) -> None:
    now = time.time()
    from datetime import UTC, datetime

    row = DeadLetter.objects.create(
        event_id=uuid.uuid4(),
        event_type="activity",
        original_topic="user.activities",
        payload={"user_id": "a\\u0000b"},
        value=b"{}",
        reason=DeadLetter.Reason.PERMANENT_ERROR,
        error_class="MessageSizeTooLargeError",
        first_failed_at=datetime.fromtimestamp(now, UTC),
        last_failed_at=datetime.fromtimestamp(now, UTC),
        status=DeadLetter.Status.QUARANTINED,
        quarantine_reason="the database refused the entry as it was (NUL)",
        original_b64=base64.b64encode(b'{"user_id":"a\\u0000b"}').decode(),
    )
    page = admin_client.get(f"/admin/publisher/deadletter/{row.pk}/change/").content.decode()
    assert "the database refused the entry as it was (NUL)" in page
    assert row.original_b64 in page


# ---------------------------------------------------------------- a retry the queue refuses


@pytest.fixture
def redis_user_without_enqueue() -> Iterator[tuple[str, str]]:
    """A Redis user that may do everything but push onto a list: Celery cannot enqueue a retry (as when Redis is
    out of memory), while taking, acknowledging and bookkeeping still work."""
    admin = get_redis()
    name, password = f"noenqueue-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    admin.execute_command("ACL", "SETUSER", name, "on", f">{password}", "~*", "&*", "+@all", "-lpush", "-rpush")
    try:
        yield name, password
    finally:
        admin.execute_command("ACL", "DELUSER", name)


def test_a_retry_that_cannot_be_enqueued_leaves_the_task_in_redis(
    default_routing: None, own_redis_db: str, redis_user_without_enqueue: tuple[str, str], kafka_reader: Any
) -> None:
    """Celery answers a failed retry enqueue with Reject(requeue=False), and the broker then deletes the task:
    accepted events gone, no dead letter. The task must stay in Redis and be delivered once Redis takes it."""
    user, password = redis_user_without_enqueue
    restricted = own_redis_db.replace("redis://", f"redis://{user}:{password}@", 1)
    reader = kafka_reader("user.activities")
    client = get_redis()
    breaker.force_open()  # the task will be deferred, so it must enqueue its retry
    worker = WorkerProcess(extra_env={"REDIS_URL": restricted, "CELERY_BROKER_URL": restricted})
    try:
        event = normalized(factories.activity())
        enqueue_here([event])
        wait_for(lambda: "publish deferred" in worker.output(), timeout=30, what="the task deferred")
        time.sleep(2)

        def task_in_redis() -> bool:
            return publish_list_length() > 0 or int(client.hlen("unacked")) > 0

        assert task_in_redis(), "the task whose retry could not be enqueued is gone from Redis"
        client.execute_command("ACL", "SETUSER", user, "+lpush", "+rpush")
        breaker.reset()
    finally:
        worker.stop()
    # Redis refused to put it back too (and Celery's worker stops on such a broker error), so it waits in the
    # unacknowledged set until the visibility timeout hands it to the next worker.
    worker = WorkerProcess(extra_env={"REDIS_URL": own_redis_db, "CELERY_VISIBILITY_TIMEOUT": "60"})
    try:
        assert count_in_kafka(reader, event["event_id"], timeout=150) == 1
    finally:
        worker.stop()


# ---------------------------------------------------------------- retrying within the visibility timeout


def test_the_admin_refuses_a_retry_policy_that_outlasts_the_visibility_timeout(admin_client: Client) -> None:
    policy = RetryPolicy.get_solo()
    before = (policy.initial_delay_ms, policy.max_delay_ms, policy.max_retries)
    response = admin_client.post(
        "/admin/publisher/retrypolicy/",
        {"initial_delay_ms": 60_000, "max_delay_ms": 300_000, "backoff_factor": 2.0, "max_retries": 20, "jitter": "on"},
    )
    assert response.status_code == 200  # the form again, with the error
    assert "PUBLISHER_RETRY_DEADLINE" in response.content.decode()
    policy.refresh_from_db()
    assert (policy.initial_delay_ms, policy.max_delay_ms, policy.max_retries) == before
    # The defaults fit.
    response = admin_client.post(
        "/admin/publisher/retrypolicy/",
        {"initial_delay_ms": 100, "max_delay_ms": 5000, "backoff_factor": 2.0, "max_retries": 3, "jitter": "on"},
    )
    assert response.status_code == 302


def test_in_task_retrying_stops_at_the_deadline_whatever_the_policy(default_routing: None) -> None:
    """A policy saved before the admin checked it (20 retries 1 s apart) while no broker answers: the run gives
    up at PUBLISHER_RETRY_DEADLINE (an outage: the breaker opens and the work is deferred, not dead-lettered)
    instead of retrying past the visibility timeout."""
    from tests.conftest import free_port

    RetryPolicy.objects.update_or_create(
        pk=1, defaults={"initial_delay_ms": 1000, "max_delay_ms": 1000, "max_retries": 20, "jitter": False}
    )
    publishing._policy_cache = None
    event = normalized(factories.activity())
    nowhere = [f"127.0.0.1:{free_port()}"]
    kafka_gateway.reset_producer()
    try:
        with override_settings(PUBLISHER_RETRY_DEADLINE=8.0, KAFKA_PRODUCER_TIMEOUT=1.0, KAFKA_BROKERS=nowhere):
            started = time.monotonic()
            with pytest.raises(publishing.PublishDeferred) as deferred:
                publish_events(events=[event], source="test", accepted_at=time.time())
            elapsed = time.monotonic() - started
    finally:
        kafka_gateway.reset_producer()
        publishing._policy_cache = None
    assert deferred.value.pending == {0: ["user.activities"]}
    assert elapsed < 8.0 + 3.0, elapsed  # the policy alone would have retried for 20+ s
    assert not DeadLetter.objects.filter(event_id=event["event_id"]).exists()


# ---------------------------------------------------------------- what was delivered is never dead-lettered


def test_a_poison_task_dead_letters_only_what_it_had_not_delivered(default_routing: None) -> None:
    """quality >= 4: the seed routes the attempt to user.attempts and ml.training_events. The task delivered
    user.attempts before it started killing its worker: only ml.training_events may be dead-lettered (a dead
    letter of the other would be published twice by its replay)."""
    event = normalized(factories.attempt(quality=5))
    poison.dead_letter_task(
        events=[event], source="test", routes=None, deliveries=3, delivered=frozenset({(0, "user.attempts")})
    )
    rows = DeadLetter.objects.filter(event_id=event["event_id"])
    assert {r.original_topic for r in rows} == {"ml.training_events"}
    assert {r.reason for r in rows} == {DeadLetter.Reason.POISON_TASK}


def test_progress_is_saved_after_every_round_that_delivered(default_routing: None) -> None:
    """A run that ends after its first round (deliveries plus a dead letter to write) tells the task what Kafka
    has before it moves on, so a worker dying while it writes the dead letter does not publish those again."""
    create_topic("test.small-2000", **{"max.message.bytes": "2000"})
    route("too-big", "test.small-2000")
    ok = normalized(factories.activity())
    too_big = normalized(factories.activity(activity_type="too-big", properties={"b": "y" * 3000}))
    told: list[list[tuple[int, str]]] = []
    publish_events(events=[ok, too_big], source="test", accepted_at=time.time(), on_delivered=told.append)
    # Both reached user.activities (the seed routes every activity there); the second also owes a dead letter.
    assert [sorted(pairs) for pairs in told] == [[(0, "user.activities"), (1, "user.activities")]]


# ---------------------------------------------------------------- logs


def test_the_worker_logs_no_payload_at_info(default_routing: None, own_redis_db: str, kafka_reader: Any) -> None:
    """Ids, counts and outcomes, never the events (user ids, free-text responses) — a retried task included."""
    reader = kafka_reader("user.attempts")
    secret_user, secret_text = f"learner-{uuid.uuid4().hex}", f"free text {uuid.uuid4().hex}"
    event = normalized(factories.attempt(user_id=secret_user, response=secret_text, quality=1))
    breaker.force_open()
    worker = WorkerProcess(extra_env={"REDIS_URL": own_redis_db, "LOG_LEVEL": "info"})
    try:
        enqueue_here([event])
        wait_for(lambda: "publish deferred" in worker.output(), timeout=30, what="the task deferred")
        breaker.reset()
        assert count_in_kafka(reader, event["event_id"], timeout=60) == 1
        time.sleep(1)
        log = worker.output()
    finally:
        worker.stop()
    assert "received" in log  # the log is there, just without the payload
    assert secret_user not in log
    assert secret_text not in log


@pytest.fixture(autouse=True)
def _breaker_closed() -> Iterator[None]:
    breaker.reset()
    yield
    breaker.reset()


# ---------------------------------------------------------------- a run that died after sending


def test_a_redelivered_task_does_not_send_again_what_its_dead_run_wrote(
    default_routing: None, celery_worker: WorkerProcess, kafka_reader: Any
) -> None:
    """The run was killed after Kafka wrote its records but before it recorded that (the acknowledgement was on
    its way): the redelivered task finds them in Kafka and sends only the rest."""
    from publisher.progress import TaskProgress
    from publisher.tasks import publish_events as publish_task

    readers = kafka_reader("user.activities"), kafka_reader("user.activities")
    written, owed = normalized(factories.activity()), normalized(factories.activity())
    task_id = str(uuid.uuid4())
    TaskProgress(task_id).start()  # the first run started...
    publish_events(events=[written], source="test", accepted_at=time.time())  # ...wrote one, and died
    publish_task.apply_async(
        kwargs={"events": [written, owed], "source": "test", "accepted_at": time.time()}, task_id=task_id
    )
    assert count_in_kafka(readers[0], owed["event_id"], timeout=30) == 1
    assert count_in_kafka(readers[1], written["event_id"], timeout=10) == 1
    assert "already in Kafka" in celery_worker.output()


def test_a_task_redelivered_after_it_finished_does_nothing(
    default_routing: None, celery_worker: WorkerProcess, kafka_reader: Any
) -> None:
    """Its pool process was killed after the task finished but before the broker heard so: Celery runs the same
    message again. It must not publish a second time."""
    from publisher.progress import TaskProgress
    from publisher.tasks import publish_events as publish_task

    reader, whole_run = kafka_reader("user.activities"), kafka_reader("user.activities")
    event, marker = normalized(factories.activity()), normalized(factories.activity())
    task_id = str(uuid.uuid4())
    publish_task.apply_async(kwargs={"events": [event], "source": "test", "accepted_at": time.time()}, task_id=task_id)
    assert count_in_kafka(reader, event["event_id"], timeout=30, settle=0.5) == 1
    publish_task.apply_async(kwargs={"events": [event], "source": "test", "accepted_at": time.time()}, task_id=task_id)
    wait_for(lambda: "done by an earlier run" in celery_worker.output(), timeout=20, what="the redelivery skipped")
    publish_task.apply_async(kwargs={"events": [marker], "source": "test", "accepted_at": time.time()})
    assert count_in_kafka(reader, marker["event_id"], timeout=30, settle=0.5) == 1
    assert count_in_kafka(whole_run, event["event_id"], timeout=10) == 1
    assert TaskProgress(task_id).start().complete


def test_owed_records_are_what_kafka_does_not_have(default_routing: None) -> None:
    from publisher.publishing import build_records, owed_records

    since = time.time()
    written, owed = normalized(factories.activity()), normalized(factories.activity())
    publish_events(events=[written], source="test", accepted_at=time.time())
    records, _ = build_records(
        [written, owed], {0: ["user.activities"], 1: ["user.activities"]}, {}, source="test", accepted_at=since
    )
    told: list[list[tuple[int, str]]] = []
    assert [r.index for r in owed_records([written, owed], records, since=since, on_delivered=told.append)] == [1]
    assert told == [[(0, "user.activities")]]
    # Kafka unreadable: everything is still owed (at least once), and nothing claims to be delivered.
    from tests.conftest import free_port

    with override_settings(KAFKA_BROKERS=[f"127.0.0.1:{free_port()}"], KAFKA_PRODUCER_TIMEOUT=1.0):
        assert len(owed_records([written, owed], records, since=since, on_delivered=told.append)) == 2
    assert len(told) == 1


def test_a_task_killed_while_its_last_writes_go_out_leaves_its_progress_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """redis-py may send a task's closing writes in several pieces. Whatever byte the process dies at, the task's
    progress is either marked complete or still all there, never deleted without the mark (that made the
    redelivered task send its whole batch again)."""
    import redis.connection

    from config.redis import deferred_writes
    from publisher.progress import TaskProgress

    task_id = str(uuid.uuid4())
    progress = TaskProgress(task_id)
    progress.start()
    progress.delivered([(0, "user.activities")])
    sent = bytearray()

    def record(self: Any, command: Any, check_health: bool = True) -> None:
        sent.extend(_packed(command))

    real_send = redis.connection.Connection.send_packed_command
    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", record)
    with deferred_writes():
        TaskProgress(task_id).finish(complete=True)
    monkeypatch.undo()
    assert b"task-complete" in sent

    for cut in range(0, len(sent), 7):
        task_id = str(uuid.uuid4())
        TaskProgress(task_id).start()
        TaskProgress(task_id).delivered([(0, "user.activities")])
        pid = os.fork()
        if pid == 0:  # the pool process: sends the first `cut` bytes of its closing writes, then is killed

            def send_part(self: Any, command: Any, check_health: bool = True, cut: int = cut) -> None:
                packed = _packed(command)
                if b"task-complete" in packed and b"DEL" in packed:
                    self._sock.sendall(packed[:cut])
                    os._exit(9)
                real_send(self, command, check_health)

            monkeypatch.setattr(redis.connection.Connection, "send_packed_command", send_part)
            with deferred_writes():
                TaskProgress(task_id).finish(complete=True)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 9, "the pool process did not die mid-send"
        time.sleep(0.02)  # Redis has read what the dead process sent
        after = TaskProgress(task_id).start()
        assert after.complete or after.done == {(0, "user.activities")}, (
            f"cut at byte {cut} of {len(sent)}: progress deleted without the complete mark"
        )


def _packed(command: Any) -> bytes:
    """What redis-py's send_packed_command is given (one buffer or a list of pieces), as the bytes sent."""
    pieces = [command] if isinstance(command, bytes | str) else command
    return b"".join(p.encode() if isinstance(p, str) else bytes(p) for p in pieces)
