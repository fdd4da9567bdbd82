"""What the worker's main process sends a pool process for a publish task: the headers and the body once, not
the decoded events a second time (Celery's default pickles both)."""

from __future__ import annotations

import base64
import pickle

import orjson
from celery.worker.request import Request
from kombu import compression
from kombu.message import Message
from kombu.serialization import loads

from config.celery import app
from publisher import handoff
from publisher.tasks import LeanRequest, publish_events


def _received(kwargs: dict[str, object]) -> Message:
    raw = orjson.loads(
        handoff.task_message(task_name=publish_events.name, queue_name="publish", kwargs=kwargs, kwargsrepr="<2>")
    )
    body = base64.b64decode(raw["body"])
    return Message(
        body=compression.decompress(body, raw["headers"]["compression"]),
        content_type=raw["content-type"],
        content_encoding=raw["content-encoding"],
        headers=raw["headers"],
        properties=raw["properties"],
        delivery_info=raw["properties"]["delivery_info"],
    )


def test_publish_tasks_use_the_lean_request() -> None:
    assert publish_events.Request is LeanRequest


def test_the_pool_gets_the_events_once_in_the_body() -> None:
    events = [{"event_id": f"e-{n}", "event_type": "activity", "payload": "x" * 200} for n in range(2)]
    kwargs = {"events": events, "source": "s", "accepted_at": 1.5}
    request = LeanRequest(_received(kwargs), app=app, task=publish_events)

    sent = request.request_dict
    assert "args" not in sent and "kwargs" not in sent
    assert sent["id"] == request.id and sent["task"] == publish_events.name
    # What the pool process decodes (celery.app.trace.fast_trace_task) is the whole call.
    args, decoded, _ = loads(request.body, request.content_type, request.content_encoding, accept={"application/json"})
    assert (args, decoded) == ([], kwargs)
    # The main process still knows the arguments (logs, errors), it just doesn't ship them twice.
    assert request.kwargs == kwargs
    assert b"x" * 200 not in pickle.dumps(sent)


def test_celerys_default_request_would_ship_the_events_twice() -> None:
    kwargs = {"events": [{"event_id": "e", "payload": "y" * 200}], "source": "s", "accepted_at": 1.5}
    default = Request(_received(kwargs), app=app, task=publish_events)
    assert default.request_dict["kwargs"] == kwargs  # what LeanRequest leaves out
