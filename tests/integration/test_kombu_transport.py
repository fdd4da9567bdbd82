"""The fast path kombu_redis_transport against the real Redis: a message taken off the queue whose unacknowledged
bookkeeping fails (Redis went away between BRPOP and ZADD/HSET) is put back by the next channel, not lost."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.conf import settings
from kombu import Connection

from fastpaths import kombu_redis_transport as kombu_redis

# The transport is the fast path itself (settings choose kombu's own "redis" transport when it is off, and
# every other test of the suite then runs on that): skipped in a run that switched it off.
pytestmark = pytest.mark.fastpath("kombu_redis_transport")


def _connection() -> Connection:
    return Connection(settings.CELERY_BROKER_URL, transport=kombu_redis.Transport)


@pytest.fixture
def scratch_queue() -> Iterator[str]:
    name = f"test-orphans-{uuid.uuid4().hex[:8]}"
    yield name
    with _connection() as conn:
        conn.default_channel.queue_delete(name)
    kombu_redis._orphans.clear()


def test_a_message_whose_bookkeeping_failed_goes_back_on_the_queue(
    scratch_queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _connection() as conn:
        conn.SimpleQueue(scratch_queue).put({"events": ["e1", "e2"]})

    with _connection() as conn:
        channel = conn.default_channel
        channel.queue_declare(scratch_queue)

        def redis_gone(*args: Any, **kwargs: Any) -> Any:
            raise redis.ConnectionError("Connection reset by peer")

        # The moment the fault test hit: the message is off the list, then Redis drops the connection.
        monkeypatch.setattr(kombu_redis.QoS, "pipe_or_acquire", redis_gone)
        with pytest.raises(redis.ConnectionError):
            channel.basic_get(scratch_queue, no_ack=False)
        monkeypatch.undo()
        assert channel.client.llen(scratch_queue) == 0  # only this process holds it now
        assert len(kombu_redis._orphans) == 1

    with _connection() as conn:  # Celery reconnects: a new channel
        queue = conn.SimpleQueue(scratch_queue)
        message = queue.get(timeout=5)
        assert message.payload == {"events": ["e1", "e2"]}
        assert message.delivery_info["redelivered"] is True
        message.ack()
        assert kombu_redis._orphans == []


def test_nothing_is_restored_twice(scratch_queue: str) -> None:
    with _connection() as conn:
        conn.SimpleQueue(scratch_queue).put({"n": 1})
        assert conn.default_channel.restore_orphans() == 0
        assert conn.default_channel.client.llen(scratch_queue) == 1


def test_the_settings_choose_the_transport_by_the_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fastpath_switch import switch

    assert kombu_redis.transport_for("redis://127.0.0.1:6380/0") == kombu_redis.TRANSPORT
    assert kombu_redis.transport_for("amqp://guest@127.0.0.1//") is None
    switch(monkeypatch, "kombu_redis_transport", False)
    assert kombu_redis.transport_for("redis://127.0.0.1:6380/0") is None  # kombu's own "redis" transport


def _consume_one(conn: Connection, queue_name: str) -> list[Any]:
    """Take one message the way a Celery worker does (BLMOVE through the event loop's poller), and ack it."""
    from kombu import Consumer, Queue

    got: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        got.append(body)
        message.ack()

    with Consumer(conn, [Queue(queue_name)], callbacks=[on_message], accept=["json"]):
        conn.drain_events(timeout=5)
    return got


def test_a_worker_takes_a_message_through_its_in_flight_list(scratch_queue: str) -> None:
    with _connection() as conn:
        conn.SimpleQueue(scratch_queue).put({"n": 1})
    with _connection() as conn:
        channel = conn.default_channel
        assert _consume_one(conn, scratch_queue) == [{"n": 1}]
        client = channel.client
        inflight = channel._inflight_list()
        assert client.llen(scratch_queue) == 0
        assert client.llen(inflight) == 0  # recorded as unacknowledged, so out of the in-flight list
        assert client.hget(kombu_redis.INFLIGHT_REGISTRY, inflight) == scratch_queue.encode()
        assert client.ttl(f"{inflight}:alive") > 0
        assert channel.restore_dead_inflight() == 0  # this worker is alive: nothing of its own is taken back


DIES_AFTER_TAKING = """
import os, sys
import django
django.setup()
from django.conf import settings
from kombu import Connection, Consumer, Queue
from fastpaths import kombu_redis_transport as t
t.ALIVE_SECONDS = 1
def die(*args, **kwargs):
    os._exit(9)  # SIGKILL's moment: the message is off the queue, not yet recorded as unacknowledged
t.QoS.append = die
with Connection(settings.CELERY_BROKER_URL, transport=t.Transport) as conn:
    with Consumer(conn, [Queue(sys.argv[1])], callbacks=[lambda body, message: None], accept=["json"]):
        conn.drain_events(timeout=5)
"""


def test_a_message_taken_by_a_worker_killed_before_recording_it_goes_back_on_the_queue(scratch_queue: str) -> None:
    import os
    import subprocess
    import sys
    import time

    with _connection() as conn:
        conn.SimpleQueue(scratch_queue).put({"events": ["e1"]})
    died = subprocess.run(
        [sys.executable, "-c", DIES_AFTER_TAKING, scratch_queue],
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        timeout=60,
    )
    assert died.returncode == 9, died.stderr.decode()[-2000:]
    with _connection() as conn:
        channel = conn.default_channel
        assert channel.client.llen(scratch_queue) == 0  # only the dead worker's in-flight list holds it
        deadline = time.monotonic() + 10
        restored = 0
        while not restored and time.monotonic() < deadline:  # its liveness key lapses after a second
            restored = channel.restore_dead_inflight()
            time.sleep(0.2)
        assert restored == 1
        assert _consume_one(conn, scratch_queue) == [{"events": ["e1"]}]
        assert channel.restore_dead_inflight() == 0  # moved once, not twice
