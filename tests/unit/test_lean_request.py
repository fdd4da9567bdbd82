"""What the worker's main process sends a pool process for a publish task: the headers and the body once, not
the decoded events a second time (Celery's default pickles both)."""

from __future__ import annotations

import base64
import pickle
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from celery.worker.request import Request
from celery.worker.strategy import default
from kombu import compression
from kombu.message import Message
from kombu.serialization import loads

from config.celery import app
from fastpaths import celery_handoff as handoff
from fastpaths import celery_lean_strategy
from fastpaths.celery_lean_strategy import LeanRequest, lean_strategy
from publisher.tasks import publish_events
from tests.fastpath_switch import switch


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


@pytest.mark.fastpath("celery_lean_strategy")
def test_publish_tasks_use_the_lean_request() -> None:
    assert publish_events.Request is LeanRequest


def test_without_the_fast_path_publish_tasks_are_declared_with_celerys_own(monkeypatch: Any) -> None:
    switch(monkeypatch, "celery_lean_strategy", False)
    assert celery_lean_strategy.task_options() == {}  # publisher_task then leaves Celery's defaults
    switch(monkeypatch, "celery_lean_strategy", True)
    assert celery_lean_strategy.task_options() == {"Request": LeanRequest, "Strategy": celery_lean_strategy.STRATEGY}


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
    # Built straight from a message, the request still knows the arguments; the worker's strategy (below) spares
    # the main process even that decoding.
    assert request.kwargs == kwargs
    assert b"x" * 200 not in pickle.dumps(sent)


def test_celerys_default_request_would_ship_the_events_twice() -> None:
    kwargs = {"events": [{"event_id": "e", "payload": "y" * 200}], "source": "s", "accepted_at": 1.5}
    default = Request(_received(kwargs), app=app, task=publish_events)
    assert default.request_dict["kwargs"] == kwargs  # what LeanRequest leaves out


def _main_process_receives(message: Message, *, lean: bool = True) -> Any:
    """Run Celery's own strategy for a publish task as the worker's main process does, with a consumer that
    only records the request it is handed; returns that request."""
    handed: list[Any] = []
    consumer = SimpleNamespace(
        hostname="test@host",
        connection_errors=(),
        event_dispatcher=None,
        timer=SimpleNamespace(call_at=None),
        apply_eta_task=None,
        task_buckets={},
        on_task_request=handed.append,
        _limit_task=None,
        _limit_post_eta=None,
        pool=SimpleNamespace(apply_async=None),
        controller=SimpleNamespace(state=SimpleNamespace(revoked=set())),
        disable_rate_limits=True,
    )
    strategy = lean_strategy if lean else default
    on_message = strategy(publish_events, app, consumer, task_reserved=lambda request: None)
    on_message(message, None, lambda: None, lambda requeue=False: None, [])
    [request] = handed
    return request


@pytest.mark.fastpath("celery_lean_strategy")
def test_the_main_process_hands_on_a_publish_task_without_decoding_its_body(monkeypatch: Any) -> None:
    assert publish_events.Strategy == celery_lean_strategy.STRATEGY
    events = [{"event_id": f"e-{n}", "event_type": "activity", "payload": "z" * 200} for n in range(3)]
    kwargs = {"events": events, "source": "s", "accepted_at": 2.5}
    message = _received(kwargs)
    decoded: list[Message] = []
    original_decode = Message._decode

    def recording_decode(self: Message) -> Any:
        decoded.append(self)
        return original_decode(self)

    monkeypatch.setattr(Message, "_decode", recording_decode)

    request = _main_process_receives(message)

    assert decoded == []  # no decompression, no JSON parse in the main process
    assert request.id == message.headers["id"] and request.name == publish_events.name
    assert request.kwargsrepr == "<2>"  # what its log line and events show
    assert request.kwargs == {}
    # The pool process still gets the whole call in the body, as before.
    args, in_body, _ = loads(request.body, request.content_type, request.content_encoding, accept={"application/json"})
    assert (args, in_body) == ([], kwargs)


def test_celerys_own_strategy_hands_on_the_same_task_decoded() -> None:
    """The public path (fast path off): Celery's default strategy decodes the body in the main process."""
    events = [{"event_id": f"e-{n}", "event_type": "activity", "payload": "z" * 200} for n in range(3)]
    kwargs = {"events": events, "source": "s", "accepted_at": 2.5}
    message = _received(kwargs)

    request = _main_process_receives(message, lean=False)

    assert request.id == message.headers["id"] and request.name == publish_events.name
    assert request.kwargs == kwargs
    args, in_body, _ = loads(request.body, request.content_type, request.content_encoding, accept={"application/json"})
    assert (args, in_body) == ([], kwargs)
