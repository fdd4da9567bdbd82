"""Plain single-event POSTs answered before any handler (fast path `direct_single_event`), called as the server
calls the app, against the real database and Redis: its answers are the view's, header by header, and whatever
is not plain is the view's to answer, counted once."""

from __future__ import annotations

import io
import time
import zlib
from typing import Any

import orjson
import pytest
from django.test import override_settings

from config.redis import get_redis
from fastpaths.direct_single_event import DirectSingleEvent
from fastpaths.django_lean_handler import EventEndpointHandler
from ingestion import services, views
from ingestion.auth import clear_key_cache
from ingestion.middleware import ingest_paths
from publisher import queue
from tests import factories
from tests.wsgi_environ import EVENT_PATH, event_post

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.fastpath("direct_single_event")]


class _Handler:
    """The lean handler the fast path wraps, counting the requests handed to it."""

    def __init__(self) -> None:
        self.handler = EventEndpointHandler(ingest_paths())
        self.calls = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.calls += 1
        return self.handler(environ, start_response)


class _Served:
    def __init__(self, app: Any, environ: dict[str, Any]) -> None:
        self.status = ""
        self.headers: dict[str, str] = {}
        self.body = b"".join(app(environ, self._start))

    def _start(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        self.status = status
        self.headers = dict(headers)

    def json(self) -> Any:
        return orjson.loads(self.body)


@pytest.fixture
def handler() -> _Handler:
    return _Handler()


@pytest.fixture
def direct(handler: _Handler) -> DirectSingleEvent:
    return DirectSingleEvent(handler, path=EVENT_PATH, answer=views.answer_event_directly)


@pytest.fixture(autouse=True)
def _empty_redis() -> Any:
    clear_key_cache()
    yield
    get_redis().flushdb()  # the tasks queued here (no worker runs), in the test run's own database


def _post(app: Any, key: str, event: dict[str, Any], **extra: str) -> _Served:
    return _Served(app, event_post(orjson.dumps(event), key, **extra))


def _comparable(headers: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in headers.items() if name not in ("traceresponse", "Content-Length")}


def test_a_plain_event_is_answered_directly_as_the_view_answers_it(
    direct: DirectSingleEvent, handler: _Handler, api_key: str
) -> None:
    by_view = _post(direct, api_key, factories.attempt())  # the key is looked up: the view's to answer
    assert handler.calls == 1
    event = factories.attempt()
    served = _post(direct, api_key, event)

    assert handler.calls == 1, "a plain event with a cached key went on to the handler"
    assert served.status == by_view.status == "202 Accepted"
    assert _comparable(served.headers) == _comparable(by_view.headers)
    assert served.headers["X-Content-Type-Options"] == "nosniff"
    assert served.headers["Content-Length"] == str(len(served.body))
    assert served.headers["traceresponse"].startswith("00-")
    answered = served.json()
    assert set(answered) == set(by_view.json()) and answered["status"] == "accepted"
    receipt = services.event_receipt(event_id=answered["event_id"], owner=api_key.partition(".")[0])
    assert receipt is not None and receipt["status"] == "queued"


def test_the_callers_trace_comes_back_and_travels_with_the_event(direct: DirectSingleEvent, api_key: str) -> None:
    _post(direct, api_key, factories.attempt())
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    served = _post(direct, api_key, factories.attempt(), HTTP_TRACEPARENT=traceparent)
    assert served.status == "202 Accepted"
    assert served.headers["traceresponse"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("invalid event", "400 Bad Request"),
        ("malformed JSON", "400 Bad Request"),
        ("gzip body", "202 Accepted"),
        ("form body", "415 Unsupported Media Type"),
        ("unknown key", "401 Unauthorized"),
        ("host not allowed", "400 Bad Request"),
        ("GET", "405 Method Not Allowed"),
    ],
)
def test_what_is_not_plain_is_answered_by_the_view(
    direct: DirectSingleEvent, handler: _Handler, api_key: str, case: str, status: str
) -> None:
    _post(direct, api_key, factories.attempt())  # the key is cached from here on
    body = orjson.dumps(factories.attempt())
    environ = event_post(body, api_key)
    if case == "invalid event":
        environ = event_post(orjson.dumps(factories.attempt(score=2.5)), api_key)
    elif case == "malformed JSON":
        environ = event_post(b'{"event_type": ', api_key)
    elif case == "gzip body":
        packed = zlib.compress(body, wbits=31)
        environ = event_post(packed, api_key, HTTP_CONTENT_ENCODING="gzip")
    elif case == "form body":
        environ["CONTENT_TYPE"] = "application/x-www-form-urlencoded"
    elif case == "unknown key":
        environ = event_post(body, "AAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    elif case == "host not allowed":
        environ["HTTP_HOST"] = "evil.example"
    elif case == "GET":
        environ["REQUEST_METHOD"] = "GET"
    by_view = _Served(handler.handler, dict(environ, **{"wsgi.input": io.BytesIO(environ["wsgi.input"].getvalue())}))
    calls = handler.calls
    served = _Served(direct, environ)

    assert handler.calls == calls + 1
    assert served.status == status
    if case != "gzip body":  # the same error, word for word (a 202 names a new event id)
        assert served.body == by_view.body


@override_settings(INGEST_RATE_LIMIT="4/hour")
def test_a_request_handed_to_the_view_counts_once_against_the_rate_limit(
    direct: DirectSingleEvent, api_key: str
) -> None:
    """Four per hour: the first request (key looked up), two invalid events (handed over after the direct path
    read them) and one more are all within the limit; only the fifth is refused."""
    statuses = [
        _post(direct, api_key, factories.attempt()).status,
        _post(direct, api_key, factories.attempt(score=2.5)).status,
        _post(direct, api_key, factories.attempt(score=2.5)).status,
        _post(direct, api_key, factories.attempt()).status,
        _post(direct, api_key, factories.attempt()).status,
    ]
    assert [s[:3] for s in statuses] == ["202", "400", "400", "202", "429"]


@override_settings(INGEST_MAX_QUEUE_DEPTH=10, INGEST_QUEUE_RECONCILE_INTERVAL=0)  # the counter is set by hand
def test_a_full_queue_is_answered_503_directly_as_the_view_answers_it(
    direct: DirectSingleEvent, handler: _Handler, api_key: str
) -> None:
    _post(direct, api_key, factories.attempt())
    redis = get_redis()
    redis.set(queue.QUEUED_EVENTS_KEY, 11)
    time.sleep(0.25)  # the depth is cached for 0.2 s per process
    by_view = _Served(handler.handler, event_post(orjson.dumps(factories.attempt()), api_key))
    calls = handler.calls
    served = _post(direct, api_key, factories.attempt())

    assert handler.calls == calls
    assert served.status == by_view.status == "503 Service Unavailable"
    assert _comparable(served.headers) == _comparable(by_view.headers)
    assert served.headers["Retry-After"] == "1"
    assert served.json() == by_view.json()


def test_an_unexpected_error_is_logged_and_answered_as_djangos_handler_would(
    handler: _Handler, api_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(environ: dict[str, Any]) -> Any:
        raise RuntimeError("the admission blew up")

    direct = DirectSingleEvent(handler, path=EVENT_PATH, answer=broken)
    with caplog.at_level("ERROR", logger="django.request"):
        served = _post(direct, api_key, factories.attempt())

    assert served.status == "500 Internal Server Error"
    assert served.headers["Content-Type"] == "application/json"
    assert set(served.json()) == {"error"}
    assert any(record.exc_info and "the admission blew up" in str(record.exc_info[1]) for record in caplog.records)
