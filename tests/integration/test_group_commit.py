"""Requests accepted at the same time share one admission and one publish task (ingestion.services group
commit), against the real Redis, Celery worker and Kafka: every request still gets its own answer, a repeat
across requests of one group is a duplicate, and every accepted event reaches Kafka exactly once."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from django.test import override_settings

from config.redis import get_redis
from events.schema import ValidatedEvent, validate_event
from ingestion import services
from publisher import handoff, queue
from publisher import services as publisher_services
from tests import factories
from tests.conftest import KafkaReader, WorkerProcess

pytestmark = pytest.mark.django_db(transaction=True)


def validated(event: dict[str, Any]) -> ValidatedEvent:
    result = validate_event(event)
    assert isinstance(result, ValidatedEvent), result
    return result


@pytest.fixture(autouse=True, params=[pytest.param("atomic", marks=pytest.mark.fastpath("celery_handoff")), "in_steps"])
def admission(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs both ways of admitting: one atomic script (the celery_handoff fast path, with Celery's
    broker REDIS_URL's Redis, the default) and claim / enqueue / confirm in steps (any other broker, or the fast
    path off)."""
    if request.param == "in_steps":
        monkeypatch.setattr(publisher_services, "can_enqueue_guarded", lambda: False)
    assert publisher_services.can_enqueue_guarded() == (request.param == "atomic")
    return str(request.param)


def _count_handed_off(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every task handed to the publisher from now on, in order (the real enqueue still runs)."""
    handed_off: list[int] = []
    real_enqueue = publisher_services.enqueue_events
    real_enqueue_guarded = publisher_services.enqueue_events_guarded

    def enqueue(**kwargs: Any) -> None:
        handed_off.append(len(kwargs["events"]))
        real_enqueue(**kwargs)

    def enqueue_guarded(**kwargs: Any) -> publisher_services.GuardedResult:
        result = real_enqueue_guarded(**kwargs)
        if result.enqueued:
            handed_off.append(len(kwargs["events"]))
        return result

    monkeypatch.setattr(publisher_services, "enqueue_events", enqueue)
    monkeypatch.setattr(publisher_services, "enqueue_events_guarded", enqueue_guarded)
    return handed_off


def _event_ids_in_kafka(reader: KafkaReader, source: str, *, expected: int) -> list[str]:
    """Sorted event ids of the records this source wrote, read until `expected` arrived (then a short settle)."""
    records = [r for r in reader.read(expected=expected) if r.headers["source"].decode() == source]
    return sorted(r.headers["event_id"].decode() for r in records)


def _send_with_first_held(
    requests: list[list[tuple[int, ValidatedEvent]]], *, source: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[Any], list[int]]:
    """Send every request from its own thread, holding the first request's admission until all the others are
    queued behind it, so the groups are known. Everything else is the real path. Returns each request's
    Outcome (or exception) and the size of every task handed to the publisher, in order."""
    real_admit = services._admit_group
    leading = threading.Event()
    handed_off = _count_handed_off(monkeypatch)

    def admit(group: list[Any], *, source: str, owner: str) -> list[Any]:
        if not leading.is_set():
            leading.set()
            combiner = services._admissions.by_key[services._group_key(source=source, owner=owner)]
            deadline = time.monotonic() + 10
            while len(combiner._queue) < len(requests) - 1 and time.monotonic() < deadline:
                time.sleep(0.005)
        return real_admit(group, source=source, owner=owner)

    monkeypatch.setattr(services, "_admit_group", admit)

    answers: list[Any] = [None] * len(requests)

    def send(n: int) -> None:
        try:
            answers[n] = services.accept_events(events=requests[n], source=source)
        except Exception as exc:  # shown by the callers' assertions
            answers[n] = exc

    first = threading.Thread(target=send, args=(0,))
    first.start()
    assert leading.wait(10)
    others = [threading.Thread(target=send, args=(n,)) for n in range(1, len(requests))]
    for thread in others:
        thread.start()
    for thread in [first, *others]:
        thread.join(30)
    return answers, handed_off


def test_concurrent_requests_share_one_task_and_each_gets_its_answer(
    default_routing: None, celery_worker: WorkerProcess, kafka_reader: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader: KafkaReader = kafka_reader("user.activities")
    source = f"group-{uuid.uuid4().hex[:8]}"
    events = [validated(factories.activity(event_id=str(uuid.uuid4()))) for _ in range(5)]
    # The sixth request repeats the second one's event: a duplicate inside the group.
    requests = [[(0, ev)] for ev in events] + [[(0, events[1])]]

    answers, handed_off = _send_with_first_held(requests, source=source, monkeypatch=monkeypatch)

    statuses = [answer.statuses[0] if isinstance(answer, services.Outcome) else answer for answer in answers]
    expected_ids = [str(ev.data["event_id"]) for ev in events]
    assert statuses == [(event_id, services.ACCEPTED) for event_id in expected_ids] + [
        (expected_ids[1], services.DUPLICATE)
    ]
    assert handed_off == [1, 4]  # two tasks for six requests; the repeat was not enqueued

    assert _event_ids_in_kafka(reader, source, expected=5) == sorted(expected_ids)


@override_settings(INGEST_MAX_BATCH=3)
def test_a_group_stops_at_the_batch_limit(
    default_routing: None, celery_worker: WorkerProcess, kafka_reader: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No task is bigger than one full batch: five waiting single events go out as 3 + 1 after the first."""
    reader: KafkaReader = kafka_reader("user.activities")
    source = f"group-{uuid.uuid4().hex[:8]}"
    events = [validated(factories.activity(event_id=str(uuid.uuid4()))) for _ in range(5)]

    answers, handed_off = _send_with_first_held([[(0, ev)] for ev in events], source=source, monkeypatch=monkeypatch)

    assert [answer.statuses[0][1] if isinstance(answer, services.Outcome) else answer for answer in answers] == [
        services.ACCEPTED
    ] * 5
    assert handed_off == [1, 3, 1]
    assert _event_ids_in_kafka(reader, source, expected=5) == sorted(str(ev.data["event_id"]) for ev in events)


@override_settings(INGEST_GROUP_WAIT=0.01, INGEST_BACKLOG_GROUP_TASKS=3, INGEST_BACKLOG_GROUP_WAIT=0.4)
def test_while_the_workers_are_behind_a_leader_holds_for_requests_that_never_announced(
    default_routing: None, celery_worker: WorkerProcess, kafka_reader: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """INGEST_BACKLOG_GROUP_*: with 3 or more publish tasks that no worker has taken, a leader waits the whole
    backlog wait, so a request that arrives later (not announced: another client's) joins its task; with fewer,
    a request goes straight through. The backlog is reported (the session's worker drains any real one at once);
    admission, the task, the worker and Kafka are real."""
    reader: KafkaReader = kafka_reader("user.activities")
    source = f"group-{uuid.uuid4().hex[:8]}"
    events = [validated(factories.activity(event_id=str(uuid.uuid4()))) for _ in range(4)]
    handed_off = _count_handed_off(monkeypatch)
    waiting = [3]
    monkeypatch.setattr(publisher_services, "waiting_tasks", lambda: waiting[0])
    answers: list[Any] = [None] * len(events)

    def send(n: int) -> None:
        answers[n] = services.accept_events(events=[(0, events[n])], source=source)

    first = threading.Thread(target=send, args=(0,))
    started = time.monotonic()
    first.start()
    time.sleep(0.1)  # well past INGEST_GROUP_WAIT
    send(1)
    first.join(10)
    held = time.monotonic() - started

    waiting[0] = 2
    started = time.monotonic()
    send(2)
    send(3)
    alone = time.monotonic() - started

    assert [answer.statuses[0][1] for answer in answers] == [services.ACCEPTED] * 4
    assert handed_off == [2, 1, 1]
    assert held >= 0.39  # the leader sat out the backlog wait
    assert alone < 0.3  # under the threshold: a sequential client is not held
    assert _event_ids_in_kafka(reader, source, expected=4) == sorted(str(ev.data["event_id"]) for ev in events)


def test_waiting_tasks_is_the_length_of_the_publish_queue_and_unknown_with_another_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The backlog signal is the broker's list itself (a scratch one here, so the session's worker leaves it
    alone), never the events counter, which a lost decrement or a purge could leave too high for good."""
    scratch = f"test:waiting:{uuid.uuid4().hex[:8]}"
    redis = get_redis()
    redis.lpush(scratch, b"task-1", b"task-2", b"task-3")
    try:
        with monkeypatch.context() as patch:
            patch.setattr(handoff, "queue_for", lambda task_name: scratch)
            assert publisher_services.waiting_tasks() == 3
    finally:
        redis.delete(scratch)
    with override_settings(CELERY_BROKER_URL="redis://127.0.0.1:1/0"):
        assert publisher_services.waiting_tasks() is None


@override_settings(INGEST_MAX_QUEUE_DEPTH=10, INGEST_QUEUE_RECONCILE_INTERVAL=0)  # the counter is set by hand
def test_a_refused_group_refuses_every_request_in_it_and_keeps_no_mark() -> None:
    """The queue is full: every request gets its own 503 error, and the dedup marks are released, so each
    client's retry is accepted later rather than called a duplicate."""
    source = f"group-{uuid.uuid4().hex[:8]}"
    events = [validated(factories.activity(event_id=str(uuid.uuid4()))) for _ in range(3)]
    redis = get_redis()
    saved = redis.get(queue.QUEUED_EVENTS_KEY)
    redis.set(queue.QUEUED_EVENTS_KEY, 10)
    try:
        errors = _send_concurrently(events, source=source)
    finally:
        redis.set(queue.QUEUED_EVENTS_KEY, saved or 0)

    assert all(isinstance(e, services.ServiceUnavailable) for e in errors), errors
    assert len({id(e) for e in errors}) == len(errors)  # each request raised its own error
    assert "queue is full" in str(errors[0])
    keys = [services.DEDUP_PREFIX + str(ev.dedup_key) for ev in events]
    assert redis.exists(*keys) == 0


def _send_concurrently(events: list[ValidatedEvent], *, source: str) -> list[BaseException | None]:
    errors: list[BaseException | None] = [None] * len(events)

    def send(n: int) -> None:
        try:
            services.accept_events(events=[(0, events[n])], source=source)
        except BaseException as exc:
            errors[n] = exc

    threads = [threading.Thread(target=send, args=(n,)) for n in range(len(events))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return errors


@override_settings(INGEST_GROUP_WAIT=0.3)
def test_group_wait_waits_for_requests_being_read_and_never_for_a_sequential_client(
    default_routing: None, celery_worker: WorkerProcess, kafka_reader: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """INGEST_GROUP_WAIT: a leader waits for a request of its source that is still being read (announced by
    admission_expected), and only until it joins; requests sent one after another never wait."""
    reader: KafkaReader = kafka_reader("user.activities")
    source = f"group-{uuid.uuid4().hex[:8]}"
    events = [validated(factories.activity(event_id=str(uuid.uuid4()))) for _ in range(4)]
    handed_off = _count_handed_off(monkeypatch)

    started = time.monotonic()
    for ev in events[:2]:  # a sequential client
        services.accept_events(events=[(0, ev)], source=source)
    assert time.monotonic() - started < 0.3

    announced = threading.Event()

    def still_reading() -> None:
        with services.admission_expected(source=source):
            announced.set()
            time.sleep(0.05)  # its body is still being read and validated
            services.accept_events(events=[(0, events[3])], source=source)

    late = threading.Thread(target=still_reading)
    late.start()
    assert announced.wait(5)
    started = time.monotonic()
    services.accept_events(events=[(0, events[2])], source=source)
    waited = time.monotonic() - started
    late.join(10)

    assert handed_off == [1, 1, 2]
    assert 0.04 < waited < 0.3  # it waited for the announced request, and only until it joined
    assert _event_ids_in_kafka(reader, source, expected=4) == sorted(str(ev.data["event_id"]) for ev in events)
