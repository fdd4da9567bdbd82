"""The event API, from real HTTP requests (the web server `make run` starts, Redis, a real Celery worker, Kafka)."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from typing import Any

import orjson
import pytest
import requests
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.urls import path
from rest_framework_api_key.models import APIKey

from config import urls as config_urls
from config.redis import get_redis
from events.schema import attempt_dedup_key
from ingestion.services import DEDUP_PREFIX
from publisher import queue
from tests import factories
from tests.conftest import KafkaReader, WebServer, WorkerProcess

pytestmark = pytest.mark.django_db(transaction=True)


def post(server: WebServer, path: str, body: Any, key: str | None, **headers: str) -> requests.Response:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    all_headers = {"Content-Type": "application/json"} | headers
    if key is not None:
        all_headers["Authorization"] = f"Api-Key {key}"
    return requests.post(f"{server.url}{path}", data=data, headers=all_headers, timeout=30)


def event_ids_in(records: list[Any]) -> list[str]:
    return [r.headers["event_id"].decode() for r in records]


# ---------------------------------------------------------------- accepted events reach Kafka


def test_single_event_is_accepted_and_published(
    default_routing: None, celery_worker: WorkerProcess, web_server: WebServer, api_key: str, kafka_reader: Any
) -> None:
    reader: KafkaReader = kafka_reader("user.activities")
    event = factories.activity(occurred_at="2026-01-01T10:00:00+02:00")

    response = post(web_server, "/api/v1/events", event, api_key)

    assert response.status_code == 202, response.text
    # Served outside the full middleware stack (config.wsgi), the answer still has its length and the
    # security headers, and no session cookie.
    assert response.headers["Content-Length"] == str(len(response.content))
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "Set-Cookie" not in response.headers
    body = response.json()
    assert body["status"] == "accepted"
    event_id = body["event_id"]
    assert uuid.UUID(event_id)
    records = [r for r in reader.read(expected=1) if r.headers["event_id"].decode() == event_id]
    assert len(records) == 1
    published = orjson.loads(records[0].value)
    assert published["occurred_at"].startswith("2026-01-01T08:00:00")  # normalised to UTC
    assert published["user_id"] == event["user_id"]
    assert records[0].headers["source"].decode().startswith("test-")


def test_batch_reports_each_event_by_index_and_publishes_the_valid_ones(
    default_routing: None, celery_worker: WorkerProcess, web_server: WebServer, api_key: str, kafka_reader: Any
) -> None:
    reader = kafka_reader("user.attempts", "user.sessions", "user.placements", "user.activities", "ml.training_events")
    events = [
        factories.attempt(quality=5),
        factories.attempt(quality=9),  # invalid
        factories.session(),
        factories.placement(),
        factories.activity(extra_field=1),  # invalid
        factories.activity(),
    ]

    response = post(web_server, "/api/v1/events/batch", {"events": events}, api_key)

    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (4, 0, 2)
    assert [r["index"] for r in body["results"]] == list(range(6))
    assert [r["status"] for r in body["results"]] == [
        "accepted", "rejected", "accepted", "accepted", "rejected", "accepted",
    ]  # fmt: skip
    assert body["results"][1]["errors"][0]["path"] == "events[1].quality"
    assert any(e["path"] == "events[4].extra_field" for e in body["results"][4]["errors"])
    accepted = {r["event_id"] for r in body["results"] if r["status"] == "accepted"}
    # attempt q5 -> attempts + ml; session -> sessions; placement -> placements + ml; activity -> activities
    records = [r for r in reader.read(expected=6) if r.headers["event_id"].decode() in accepted]
    assert len(records) == 6
    topics_by_type: dict[str, set[str]] = {}
    for r in records:
        topics_by_type.setdefault(r.headers["event_type"].decode(), set()).add(r.topic)
    assert topics_by_type == {
        "attempt": {"user.attempts", "ml.training_events"},
        "session": {"user.sessions"},
        "placement": {"user.placements", "ml.training_events"},
        "activity": {"user.activities"},
    }


def test_batch_with_nothing_valid_is_400(web_server: WebServer, api_key: str) -> None:
    response = post(web_server, "/api/v1/events/batch", {"events": [factories.attempt(quality=-1)]}, api_key)
    assert response.status_code == 400
    body = response.json()
    assert body["accepted"] == 0 and body["rejected"] == 1
    assert body["results"][0]["errors"][0]["path"] == "events[0].quality"


def test_batch_over_the_limit_is_rejected_whole(web_server: WebServer, api_key: str) -> None:
    response = post(web_server, "/api/v1/events/batch", {"events": [factories.activity()] * 1001}, api_key)
    assert response.status_code == 400
    assert response.json()["errors"][0]["path"] == "events"


def test_batch_of_800_events_over_3_mb_is_accepted_and_published(
    default_routing: None, celery_worker: WorkerProcess, web_server: WebServer, api_key: str, kafka_reader: Any
) -> None:
    """Under INGEST_MAX_BODY_BYTES (5 MiB) but over Django's DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MiB)."""
    reader: KafkaReader = kafka_reader("user.attempts")
    events = [factories.attempt(quality=2, response="r" * 3900) for _ in range(800)]
    body = orjson.dumps({"events": events})
    assert 3_000_000 < len(body) < 5 * 1024 * 1024

    response = post(web_server, "/api/v1/events/batch", body, api_key)

    assert response.status_code == 202, response.text[:500]
    answer = response.json()
    assert (answer["accepted"], answer["rejected"]) == (800, 0)
    sent = {result["event_id"] for result in answer["results"]}
    published = [r for r in reader.read(expected=800, timeout=60) if r.headers["event_id"].decode() in sent]
    assert sorted(event_ids_in(published)) == sorted(sent)  # every one, once


# ---------------------------------------------------------------- dedup


def test_duplicate_attempt_is_answered_duplicate_and_published_once(
    default_routing: None, celery_worker: WorkerProcess, web_server: WebServer, api_key: str, kafka_reader: Any
) -> None:
    reader = kafka_reader("user.attempts")
    event = factories.attempt(quality=1)
    first = post(web_server, "/api/v1/events", event, api_key).json()
    second = post(web_server, "/api/v1/events", event, api_key).json()
    assert first["status"] == "accepted"
    assert second == {"event_id": first["event_id"], "status": "duplicate"}
    time.sleep(1)
    records = [r for r in reader.read(expected=1, settle=1.0) if r.headers["event_id"].decode() == first["event_id"]]
    assert len(records) == 1


def test_attempt_dedup_is_per_learner(
    default_routing: None, celery_worker: WorkerProcess, web_server: WebServer, api_key: str, kafka_reader: Any
) -> None:
    """Two apps that number attempts per device ("1", "2", ...) must not silence each other's learners."""
    reader = kafka_reader("user.attempts")
    attempt_id = f"n-{uuid.uuid4().hex[:6]}"
    first = factories.attempt(client_attempt_id=attempt_id)
    other_learner = factories.attempt(client_attempt_id=attempt_id, user_id=f"{first['user_id']}-other")
    answers = [post(web_server, "/api/v1/events", e, api_key).json() for e in (first, other_learner, first)]
    assert [a["status"] for a in answers] == ["accepted", "accepted", "duplicate"]
    assert answers[0]["event_id"] != answers[1]["event_id"]
    assert answers[2]["event_id"] == answers[0]["event_id"]
    ids = {answers[0]["event_id"], answers[1]["event_id"]}
    records = [r for r in reader.read(expected=2, settle=1.0) if r.headers["event_id"].decode() in ids]
    assert sorted(r.key for r in records) == sorted([first["user_id"].encode(), other_learner["user_id"].encode()])


def test_duplicates_inside_one_batch_are_caught(web_server: WebServer, api_key: str) -> None:
    event_id = str(uuid.uuid4())
    events = [factories.activity(event_id=event_id), factories.activity(event_id=event_id)]
    body = post(web_server, "/api/v1/events/batch", {"events": events}, api_key).json()
    assert [r["status"] for r in body["results"]] == ["accepted", "duplicate"]
    assert body["results"][1]["event_id"] == event_id


def test_twenty_concurrent_requests_with_the_same_event_accept_exactly_one(web_server: WebServer, api_key: str) -> None:
    event = factories.attempt()
    statuses: list[str] = []
    barrier = threading.Barrier(20)

    def send() -> None:
        barrier.wait()
        statuses.append(post(web_server, "/api/v1/events", event, api_key).json()["status"])

    threads = [threading.Thread(target=send) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == ["accepted"] + ["duplicate"] * 19


# ---------------------------------------------------------------- auth


def test_missing_malformed_unknown_revoked_and_expired_keys_are_401(web_server: WebServer) -> None:
    from datetime import UTC, datetime, timedelta

    revoked_obj, revoked = APIKey.objects.create_key(name="revoked")
    revoked_obj.revoked = True
    revoked_obj.save()
    _, expired = APIKey.objects.create_key(name="expired", expiry_date=datetime.now(UTC) - timedelta(minutes=1))
    event = factories.activity()
    cases = {
        "missing": {},
        "malformed": {"Authorization": "Bearer abc"},
        "empty": {"Authorization": "Api-Key "},
        "unknown": {"Authorization": "Api-Key nope.nope"},
        "revoked": {"Authorization": f"Api-Key {revoked}"},
        "expired": {"Authorization": f"Api-Key {expired}"},
    }
    for name, headers in cases.items():
        response = post(web_server, "/api/v1/events", event, None, **headers)
        assert response.status_code == 401, name
        assert response.json()["error"], name
        assert response.headers.get("WWW-Authenticate") == "Api-Key", name


def test_a_key_revoked_while_in_use_stops_working(web_server: WebServer) -> None:
    key_obj, key = APIKey.objects.create_key(name="soon-revoked")
    assert post(web_server, "/api/v1/events", factories.activity(), key).status_code == 202
    key_obj.revoked = True
    key_obj.save()
    time.sleep(5.5)  # keys are cached per process for 5 s
    assert post(web_server, "/api/v1/events", factories.activity(), key).status_code == 401


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("body", "content_type", "status", "fragment"),
    [
        (b'{"event_type": "activity",', "application/json", 400, "Malformed JSON"),
        (b'{"a": NaN}', "application/json", 400, "Malformed JSON"),
        (b'{"a": 1e999}', "application/json", 400, "Malformed JSON"),
        (b"[" * 20000 + b"]" * 20000, "application/json", 400, "Malformed JSON"),
        (b'{"user_id": "\xff"}', "application/json", 400, "Malformed JSON"),
        (b'{"user_id": "\\ud800"}', "application/json", 400, "Malformed JSON"),
        (b"", "application/json", 400, "empty"),
        (b"{}", "text/plain", 415, "application/json"),
        (b"{}", "application/json; charset=bz2_codec", 415, "charset"),
        (b"{}", "application/x-www-form-urlencoded", 415, "application/json"),
    ],
)
def test_bad_bodies_get_a_clear_4xx_and_enqueue_nothing(
    web_server: WebServer, api_key: str, body: bytes, content_type: str, status: int, fragment: str
) -> None:
    before = queue.depth(fresh=True)
    response = post(web_server, "/api/v1/events", body, api_key, **{"Content-Type": content_type})
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]
    assert queue.depth(fresh=True) == before


def test_invalid_event_names_each_field(web_server: WebServer, api_key: str) -> None:
    event = factories.session(items_attempted=1, items_correct=2, unknown="x")
    response = post(web_server, "/api/v1/events", event, api_key)
    assert response.status_code == 400
    paths = {e["path"] for e in response.json()["errors"]}
    assert {"items_correct", "unknown"} <= paths


def test_body_over_the_limit_is_413_before_parsing(web_server: WebServer, api_key: str) -> None:
    body = b'{"events": [' + b" " * (5 * 1024 * 1024) + b"]}"
    response = post(web_server, "/api/v1/events/batch", body, api_key)
    assert response.status_code == 413
    assert "limit" in response.json()["error"]


def test_chunked_body_over_the_limit_is_413(web_server: WebServer, api_key: str) -> None:
    def chunks() -> Any:
        yield b'{"events": ['
        for _ in range(6 * 16):
            yield b" " * 65536
        yield b"]}"

    response = requests.post(
        f"{web_server.url}/api/v1/events/batch",
        data=chunks(),
        headers={"Content-Type": "application/json", "Authorization": f"Api-Key {api_key}"},
        timeout=30,
    )
    assert response.status_code == 413


def test_small_chunked_body_is_read(web_server: WebServer, api_key: str) -> None:
    payload = orjson.dumps(factories.activity())
    response = requests.post(
        f"{web_server.url}/api/v1/events",
        data=iter([payload[:10], payload[10:]]),
        headers={"Content-Type": "application/json", "Authorization": f"Api-Key {api_key}"},
        timeout=30,
    )
    assert response.status_code == 202, response.text


def test_service_stays_up_after_garbage_on_the_socket(web_server: WebServer, api_key: str) -> None:
    with socket.create_connection(("127.0.0.1", web_server.port), timeout=5) as sock:
        sock.sendall(b"POST /api/v1/events HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n\x00\xff" * 10)
    assert post(web_server, "/api/v1/events", factories.activity(), api_key).status_code == 202


# ---------------------------------------------------------------- limits (in-process, settings overridden)


def _client_post(path: str, body: Any, key: str) -> Any:
    return Client().post(
        path, data=json.dumps(body), content_type="application/json", HTTP_AUTHORIZATION=f"Api-Key {key}"
    )


@override_settings(INGEST_RATE_LIMIT="3/min")
def test_rate_limit_is_429_with_retry_after(api_key: str) -> None:
    codes = [_client_post("/api/v1/events", factories.activity(), api_key).status_code for _ in range(3)]
    assert codes == [202, 202, 202]
    response = _client_post("/api/v1/events", factories.activity(), api_key)
    assert response.status_code == 429
    assert int(response["Retry-After"]) >= 1


@override_settings(INGEST_MAX_QUEUE_DEPTH=10, INGEST_QUEUE_RECONCILE_INTERVAL=0)  # the counter is set by hand
def test_backpressure_is_503_with_retry_after_and_accepts_nothing(api_key: str) -> None:
    redis = get_redis()
    saved = redis.get(queue.QUEUED_EVENTS_KEY)
    redis.set(queue.QUEUED_EVENTS_KEY, 11)
    try:
        time.sleep(0.25)  # the depth is cached for 0.2 s per process
        event = factories.attempt()
        response = _client_post("/api/v1/events", event, api_key)
        assert response.status_code == 503
        assert response["Retry-After"] == "1"
        assert redis.get(DEDUP_PREFIX + attempt_dedup_key(event["user_id"], event["client_attempt_id"])) is None
    finally:
        redis.set(queue.QUEUED_EVENTS_KEY, saved or 0)
        time.sleep(0.25)


def test_enqueue_failure_is_503_and_releases_the_dedup_marks(api_key: str) -> None:
    """Celery's broker unreachable (its own Redis down) while the dedup store works."""
    from tests.conftest import free_port

    server = WebServer(workers=1, extra_env={"CELERY_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"})
    try:
        event = factories.attempt()
        response = post(server, "/api/v1/events", event, api_key)
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "1"
        assert get_redis().get(DEDUP_PREFIX + attempt_dedup_key(event["user_id"], event["client_attempt_id"])) is None
    finally:
        server.stop()


# ---------------------------------------------------------------- every error under /api/ is JSON

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def assert_json_error(response: requests.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text[:300]
    assert response.headers["Content-Type"] == "application/json", response.text[:300]
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    assert set(body) <= {"error", "errors"}
    return body


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "fragment"),
    [
        # the fast path (config.wsgi: event endpoints without the full middleware stack)
        ("GET", "/api/v1/events/batch", {}, 405, "GET"),
        ("GET", "/api/v1/events/batch", {"Accept": BROWSER_ACCEPT}, 405, "GET"),
        ("DELETE", "/api/v1/events", {}, 405, "DELETE"),
        ("POST", "/api/v1/events", {"Host": "evil.example"}, 400, "Host"),
        # the full stack
        ("GET", "/api/v1/nope", {}, 404, "/api/v1/nope"),
        ("POST", "/api/v1/nope", {"Accept": BROWSER_ACCEPT}, 404, "/api/v1/nope"),
        ("GET", "/api/v1/events/batch/extra", {}, 404, "/api/v1/events/batch/extra"),
        ("GET", "/api/v1/nope", {"Host": "evil.example"}, 400, "Host"),
        ("POST", "/api/routing/test", {"Host": "evil.example"}, 400, "Host"),
        ("POST", "/api/routing/test", {}, 401, "credentials"),
        ("GET", "/api/routing/test", {"Accept": BROWSER_ACCEPT}, 401, "credentials"),
    ],
)
def test_errors_under_api_are_json_in_the_error_shape(
    web_server: WebServer, api_key: str, method: str, path: str, headers: dict[str, str], status: int, fragment: str
) -> None:
    all_headers = {"Content-Type": "application/json", "Authorization": f"Api-Key {api_key}"} | headers
    before = queue.depth(fresh=True)
    response = requests.request(
        method, f"{web_server.url}{path}", data=orjson.dumps(factories.activity()), headers=all_headers, timeout=10
    )
    body = assert_json_error(response, status)
    assert fragment in body["error"]
    if status == 405:
        assert response.headers["Allow"] == "POST, OPTIONS"
    assert queue.depth(fresh=True) == before


def test_an_unsupported_method_is_405_even_without_a_key(web_server: WebServer) -> None:
    response = requests.get(f"{web_server.url}/api/v1/events/batch", headers={"Accept": BROWSER_ACCEPT}, timeout=10)
    assert_json_error(response, 405)
    assert response.headers["Allow"] == "POST, OPTIONS"


def test_errors_outside_api_stay_html(web_server: WebServer) -> None:
    missing = requests.get(f"{web_server.url}/nope", timeout=10)
    assert missing.status_code == 404
    assert missing.headers["Content-Type"].startswith("text/html")
    wrong_host = requests.get(f"{web_server.url}/admin/login/", headers={"Host": "evil.example"}, timeout=10)
    assert wrong_host.status_code == 400
    assert wrong_host.headers["Content-Type"].startswith("text/html")


def test_an_unexpected_error_is_a_json_500_without_internals(api_key: str) -> None:
    """A real failure: PostgreSQL unreachable while an API key (not yet cached) or a session is looked up."""
    from tests.conftest import free_port

    down = f"postgres://ingest:ingest@127.0.0.1:{free_port()}/ingest"
    server = WebServer(workers=1, extra_env={"DATABASE_URL": down})
    try:
        answers = [
            post(server, "/api/v1/events", factories.activity(), api_key),  # fast path
            requests.post(f"{server.url}/api/routing/test", json={}, cookies={"sessionid": "x" * 32}, timeout=30),
        ]
        for response in answers:
            body = assert_json_error(response, 500)
            assert body == {"error": "Internal server error."}
            for leak in ("Traceback", "psycopg", "OperationalError", "127.0.0.1", "connection"):
                assert leak not in response.text
        admin = requests.get(f"{server.url}/admin/", cookies={"sessionid": "x" * 32}, timeout=30)
        assert admin.status_code == 500
        assert admin.headers["Content-Type"].startswith("text/html")
    finally:
        server.stop()


def _raises(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("internal detail: /srv/secret.conf")


def _reads_body(request: HttpRequest) -> HttpResponse:
    return HttpResponse(str(len(request.body)))  # Django's DATA_UPLOAD_MAX_MEMORY_SIZE applies


class URLsWithTestViews:
    """config.urls plus views that exist only in this test: Django's own checks and a crash, under /api/ and not."""

    urlpatterns = [
        path("api/v1/test-raises", _raises),
        path("api/v1/test-reads-body", _reads_body),
        path("elsewhere/raises", _raises),
        *config_urls.urlpatterns,
    ]
    handler400 = config_urls.handler400
    handler403 = config_urls.handler403
    handler404 = config_urls.handler404
    handler500 = config_urls.handler500


@override_settings(ROOT_URLCONF=URLsWithTestViews)
def test_django_errors_under_api_are_json_through_the_error_handlers() -> None:
    client = Client(raise_request_exception=False)
    crash = client.get("/api/v1/test-raises")
    assert crash.status_code == 500
    assert crash.json() == {"error": "Internal server error."}
    too_big = client.post("/api/v1/test-reads-body", b"x" * (3 * 1024 * 1024), content_type="application/octet-stream")
    assert too_big.status_code == 413
    assert "too large" in too_big.json()["error"]
    elsewhere = client.get("/elsewhere/raises")
    assert elsewhere.status_code == 500
    assert elsewhere["Content-Type"].startswith("text/html")


# ---------------------------------------------------------------- OpenAPI


def test_openapi_schema_and_local_docs(web_server: WebServer) -> None:
    schema = requests.get(f"{web_server.url}/api/schema/?format=json", timeout=10)
    assert schema.status_code == 200
    spec = schema.json()
    assert spec["openapi"].startswith("3.")
    assert "/api/v1/events" in spec["paths"] and "/api/v1/events/batch" in spec["paths"]
    docs = requests.get(f"{web_server.url}/api/docs/", timeout=10)
    assert docs.status_code == 200
    assert "swagger-ui" in docs.text
    assert "cdn" not in docs.text.lower()
    asset = next(part.split('"')[0] for part in docs.text.split('src="')[1:] if "sidecar" in part)
    assert requests.get(f"{web_server.url}{asset}", timeout=10).status_code == 200
