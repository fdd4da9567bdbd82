"""The event endpoints' own WSGI handler (fast path `django_lean_handler`), called as the server calls it, against
the real database and Redis: what a request leaves behind in its thread (database connections) and what the
server is handed back."""

from __future__ import annotations

import threading
from typing import Any

import orjson
import pytest
from django.core import signals
from django.db import connections

from config.redis import get_redis
from fastpaths.django_lean_handler import EventEndpointHandler
from ingestion.auth import clear_key_cache
from ingestion.middleware import ingest_paths
from tests import factories
from tests.wsgi_environ import EVENT_PATH, event_post

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.fastpath("django_lean_handler")]


class _Answer:
    def __init__(self) -> None:
        self.status = ""
        self.headers: dict[str, str] = {}

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        self.status = status
        self.headers = dict(headers)


def _post(handler: EventEndpointHandler, key: str, event: dict[str, Any]) -> tuple[_Answer, Any]:
    answer = _Answer()
    result = handler(event_post(orjson.dumps(event), key), answer)
    return answer, result


def _open_connections() -> list[str]:
    return [conn.alias for conn in connections.all(initialized_only=True) if conn.connection is not None]


@pytest.fixture
def handler() -> EventEndpointHandler:
    assert EVENT_PATH in ingest_paths()
    return EventEndpointHandler(ingest_paths())


@pytest.fixture(autouse=True)
def _empty_redis() -> Any:
    yield
    get_redis().flushdb()  # the tasks queued here (no worker runs), in the test run's own database


def test_an_event_is_answered_as_one_piece_of_bytes(handler: EventEndpointHandler, api_key: str) -> None:
    answer, result = _post(handler, api_key, factories.attempt())

    assert answer.status == "202 Accepted"
    assert isinstance(result, list) and len(result) == 1
    answered = orjson.loads(result[0])
    assert answered["status"] == "accepted" and answered["event_id"]
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["Content-Length"] == str(len(result[0]))
    assert answer.headers["X-Content-Type-Options"] == "nosniff"


def test_a_key_lookup_gets_the_request_signals_and_djangos_connection_rules(
    handler: EventEndpointHandler, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lookup opens a connection in the serving thread: request_finished closes it when CONN_MAX_AGE is 0 (as
    Django's own handler would), so a serving thread never keeps one Django would have closed."""
    monkeypatch.setitem(connections["default"].settings_dict, "CONN_MAX_AGE", 0)
    outcome: dict[str, Any] = {}

    def serve() -> None:  # a server thread of its own: no connection before the request
        clear_key_cache()  # the key is looked up in the database
        answer, _ = _post(handler, api_key, factories.attempt())
        outcome["status"] = answer.status
        outcome["open"] = _open_connections()
        connections.close_all()

    thread = threading.Thread(target=serve)
    thread.start()
    thread.join(30)

    assert outcome == {"status": "202 Accepted", "open": []}


def test_a_thread_holding_a_connection_gets_the_request_signals(handler: EventEndpointHandler, api_key: str) -> None:
    seen: list[str] = []

    def started(**kwargs: Any) -> None:
        seen.append("started")

    def finished(**kwargs: Any) -> None:
        seen.append("finished")

    _post(handler, api_key, factories.attempt())  # caches the key
    signals.request_started.connect(started)
    signals.request_finished.connect(finished)
    outcome: dict[str, Any] = {}

    def serve() -> None:
        _post(handler, api_key, factories.attempt())  # the key is cached by now: no database
        outcome["without"] = list(seen)
        seen.clear()
        with connections["default"].cursor() as cursor:  # as a full-stack request in this thread would
            cursor.execute("SELECT 1")
        answer, _ = _post(handler, api_key, factories.attempt())
        outcome["with"] = list(seen)
        outcome["status"] = answer.status
        connections.close_all()

    try:
        thread = threading.Thread(target=serve)
        thread.start()
        thread.join(30)
    finally:
        signals.request_started.disconnect(started)
        signals.request_finished.disconnect(finished)

    assert outcome == {"without": [], "with": ["started", "finished"], "status": "202 Accepted"}
