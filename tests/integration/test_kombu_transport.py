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
