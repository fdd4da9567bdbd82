"""The fast path celery_handoff against the real Redis: the hand-built task message is the one apply_async writes,
and the guarded enqueue does everything or nothing."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import pytest
from kombu import compression

from config.redis import get_redis
from fastpaths import celery_handoff
from publisher import handoff, queue
from publisher import services as publisher_services
from publisher.tasks import publish_events
from tests.fastpath_switch import on_off

SCRATCH_QUEUE = "handoff-check"  # no worker listens here


SCRATCH_COUNTER = "test:handoff:queued-events"  # so a worker draining other tests' tasks cannot move it


@pytest.fixture
def scratch_queue(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(queue, "QUEUED_EVENTS_KEY", SCRATCH_COUNTER)
    redis = get_redis()
    redis.delete(SCRATCH_QUEUE, SCRATCH_COUNTER)
    yield redis
    redis.delete(SCRATCH_QUEUE, SCRATCH_COUNTER)


def _decoded(raw: bytes) -> dict[str, Any]:
    message = json.loads(raw)
    message["body"] = json.loads(
        compression.decompress(base64.b64decode(message["body"]), message["headers"]["compression"])
    )
    return message


@pytest.mark.fastpath("celery_handoff")
def test_the_hand_built_message_is_the_one_apply_async_writes(scratch_queue: Any) -> None:
    kwargs = {
        "events": [{"event_id": str(uuid.uuid4()), "event_type": "activity", "n": 1.5}],
        "source": "s",
        "accepted_at": 1.25,
    }
    sent = time.time()
    publish_events.apply_async(
        kwargs=kwargs, argsrepr="", kwargsrepr="<1 events>", retry=False, queue=SCRATCH_QUEUE, routing_key=SCRATCH_QUEUE
    )
    [celery_raw] = scratch_queue.lrange(SCRATCH_QUEUE, 0, -1)
    celery = _decoded(celery_raw)
    # The queue's accounting headers (publisher.queue): the events it holds, and when it was sent.
    due_at = celery["headers"][queue.DUE_HEADER]
    assert sent - 0.001 <= due_at <= time.time() + 0.001  # headers keep 0.1 ms
    assert celery["headers"][queue.EVENTS_HEADER] == 1
    ours_raw = celery_handoff.task_message(
        task_name=publish_events.name,
        queue_name=SCRATCH_QUEUE,
        kwargs=kwargs,
        kwargsrepr="<1 events>",
        headers=queue.message_headers(events=1, due_at=due_at),
    )
    ours = _decoded(ours_raw)

    # Fresh per message: the task id (also root id and correlation id) and the delivery tag.
    for message in (celery, ours):
        task_id = message["headers"]["id"]
        assert message["headers"]["root_id"] == message["properties"]["correlation_id"] == task_id
        uuid.UUID(task_id)
        uuid.UUID(message["properties"].pop("delivery_tag"))
        for place in (message["headers"], message["properties"]):
            for name in ("id", "root_id", "correlation_id"):
                place.pop(name, None)
    assert ours == celery
    assert ours["body"][1] == kwargs
    assert ours["headers"]["compression"] == "application/zstd"  # CELERY_TASK_COMPRESSION, as apply_async does


def _guarded(*, guards: list[tuple[str, str]], limit: int = 1_000_000) -> celery_handoff.GuardedResult:
    message = celery_handoff.task_message(
        task_name=publish_events.name, queue_name=SCRATCH_QUEUE, kwargs={"events": []}, kwargsrepr="<2 events>"
    )
    return celery_handoff.enqueue_guarded(
        message=message, queue_name=SCRATCH_QUEUE, count=2, limit=limit, guards=guards, guard_ttl=60
    )


@pytest.mark.fastpath("celery_handoff")
def test_guarded_enqueue_sets_every_guard_counts_and_pushes(scratch_queue: Any) -> None:
    keys = [f"test:guard:{uuid.uuid4()}" for _ in range(2)]
    scratch_queue.set(SCRATCH_COUNTER, 5)
    try:
        result = _guarded(guards=[(keys[0], "a"), (keys[1], "b")])
        assert result == celery_handoff.GuardedResult(enqueued=True)
        assert scratch_queue.mget(keys) == [b"a", b"b"]
        assert 0 < scratch_queue.ttl(keys[0]) <= 60
        assert scratch_queue.llen(SCRATCH_QUEUE) == 1
        assert scratch_queue.get(SCRATCH_COUNTER) == b"7"
    finally:
        scratch_queue.delete(*keys)


@pytest.mark.fastpath("celery_handoff")
def test_a_held_guard_means_nothing_is_done(scratch_queue: Any) -> None:
    keys = [f"test:guard:{uuid.uuid4()}" for _ in range(3)]
    scratch_queue.set(keys[1], "earlier")
    scratch_queue.set(SCRATCH_COUNTER, 5)
    try:
        result = _guarded(guards=[(keys[0], "a"), (keys[1], "b"), (keys[2], "c")])
        assert result == celery_handoff.GuardedResult(held={1: "earlier"})
        assert scratch_queue.exists(keys[0], keys[2]) == 0
        assert scratch_queue.get(keys[1]) == b"earlier"
        assert scratch_queue.llen(SCRATCH_QUEUE) == 0
        assert scratch_queue.get(SCRATCH_COUNTER) == b"5"
    finally:
        scratch_queue.delete(*keys)


@pytest.mark.fastpath("celery_handoff")
def test_held_guards_are_found_in_a_group_of_thousands(scratch_queue: Any) -> None:
    """The script reads guards in slices of 1,000: holders at both edges of a slice are reported at their
    own positions, and with none held a group this large is enqueued whole."""
    run = uuid.uuid4()
    keys = [f"test:guard:{run}:{n}" for n in range(2500)]
    held_at = [0, 999, 1000, 1999, 2499]
    for position in held_at:
        scratch_queue.set(keys[position], f"holder-{position}")
    scratch_queue.set(SCRATCH_COUNTER, 0)
    try:
        result = _guarded(guards=[(key, f"new-{n}") for n, key in enumerate(keys)])
        assert result == celery_handoff.GuardedResult(held={p: f"holder-{p}" for p in held_at})
        assert scratch_queue.exists(*keys) == len(held_at)  # nothing set
        assert scratch_queue.llen(SCRATCH_QUEUE) == 0
        scratch_queue.delete(*(keys[p] for p in held_at))
        assert _guarded(guards=[(key, f"new-{n}") for n, key in enumerate(keys)]).enqueued
        assert scratch_queue.mget(keys[998:1002]) == [b"new-998", b"new-999", b"new-1000", b"new-1001"]
        assert scratch_queue.llen(SCRATCH_QUEUE) == 1
    finally:
        scratch_queue.delete(*keys)


@pytest.mark.fastpath("celery_handoff")
def test_a_full_queue_means_nothing_is_done(scratch_queue: Any) -> None:
    key = f"test:guard:{uuid.uuid4()}"
    scratch_queue.set(SCRATCH_COUNTER, 9)
    result = _guarded(guards=[(key, "a")], limit=10)  # two more events do not fit
    assert result == celery_handoff.GuardedResult(queue_full=True)
    assert scratch_queue.exists(key) == 0
    assert scratch_queue.llen(SCRATCH_QUEUE) == 0
    assert scratch_queue.get(SCRATCH_COUNTER) == b"9"


@on_off("celery_handoff")
def test_only_the_projects_own_redis_database_as_broker_allows_it(fast_path_on: bool) -> None:
    available = handoff.same_redis
    assert available("redis://127.0.0.1:6380/2", "redis://127.0.0.1:6380/2")
    assert available("redis://127.0.0.1:6380", "redis://127.0.0.1:6380/0")
    assert not available("redis://127.0.0.1:6380/3", "redis://127.0.0.1:6380/2")
    assert not available("redis://127.0.0.1:6381/2", "redis://127.0.0.1:6380/2")
    assert not available("amqp://guest@127.0.0.1//", "redis://127.0.0.1:6380/2")
    assert not available("rediss://127.0.0.1:6380/2", "rediss://127.0.0.1:6380/2")
    # The test settings: one Redis for both. Off, the admission takes its steps around apply_async instead.
    assert publisher_services.can_enqueue_guarded() is fast_path_on
    # Routed as apply_async routes it (test_metrics.py runs a stack whose CELERY_TASK_ROUTES name another queue).
    assert handoff.queue_for(publish_events.name) == "publish"
