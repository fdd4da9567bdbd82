"""Admission against the real stack, on a Redis server of the test's own (the suite's shared worker must not drain
its queue): queued work that waits too long refuses new events (INGEST_MAX_QUEUE_DELAY), and the queued-events
counter cannot drift for longer than one reconcile interval (INGEST_QUEUE_RECONCILE_INTERVAL)."""

from __future__ import annotations

import base64
import re
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from typing import Any

import orjson
import pybreaker
import pytest
import redis
import requests
from django.test import Client, override_settings
from kombu import compression

import config.redis
from ingestion import services
from publisher import breaker, queue
from tests import factories
from tests.conftest import WebServer, WorkerProcess, free_port

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def own_redis() -> Iterator[str]:
    """A Redis server for this test alone, without persistence; its URL."""
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        server = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", directory],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=port)
        try:
            wait_until(lambda: _pings(client), timeout=10, what="the test's Redis answers")
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            client.close()
            server.terminate()
            server.wait(10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def wait_until(condition: Callable[[], Any], *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what}")


def post(web: WebServer, key: str, body: Any, path: str = "/api/v1/events") -> requests.Response:
    return requests.post(
        f"{web.url}{path}",
        data=orjson.dumps(body),
        headers={"Content-Type": "application/json", "Authorization": f"Api-Key {key}"},
        timeout=30,
    )


def events_held(client: redis.Redis) -> int:
    """Events in the publish tasks Redis holds (queued, or taken by a worker and not acknowledged), counted from
    the task bodies themselves."""
    messages = [orjson.loads(raw) for raw in client.lrange("publish", 0, -1)]
    messages += [orjson.loads(raw)[0] for raw in client.hvals("unacked")]
    total = 0
    for message in messages:
        body = base64.b64decode(message["body"])
        if "compression" in message["headers"]:
            body = compression.decompress(body, message["headers"]["compression"])
        _, kwargs, _ = orjson.loads(body)
        total += len(kwargs["events"])
    return total


def activity() -> dict[str, Any]:
    return factories.activity(event_id=str(uuid.uuid4()))


def test_work_queued_too_long_refuses_new_events_until_drained(
    default_routing: None, api_key: str, own_redis: str, kafka_reader: Any
) -> None:
    env = {"REDIS_URL": own_redis, "CELERY_BROKER_URL": own_redis, "INGEST_MAX_QUEUE_DELAY": "500ms"}
    reader = kafka_reader("user.activities")
    web = WebServer(workers=1, extra_env=env)
    worker: WorkerProcess | None = None
    sent: set[str] = set()
    accepted: list[str] = []

    def send(body: Any, path: str = "/api/v1/events") -> requests.Response:
        events = body["events"] if path.endswith("batch") else [body]
        sent.update(event["event_id"] for event in events)
        response = post(web, api_key, body, path)
        if response.status_code == 202:
            accepted.extend(event["event_id"] for event in events)
        return response

    try:
        response = send({"events": [activity() for _ in range(5)]}, "/api/v1/events/batch")
        assert response.status_code == 202, response.text
        time.sleep(1.0)  # no worker: the batch's task has waited longer than the limit

        refused = send(activity())
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"] == "1"
        message = refused.json()["error"]
        assert "would wait about" in message and "limit 0.5 s" in message, message
        metrics = requests.get(f"{web.url}/metrics", timeout=10).text
        assert 'ingestion_events_rejected_total{reason="queue_delay"} 1.0' in metrics

        worker = WorkerProcess(extra_env=env)

        def accepted_again() -> bool:
            response = send(activity())
            assert response.status_code in (202, 503), response.text
            return response.status_code == 202

        wait_until(accepted_again, timeout=60, what="a new event accepted once the worker drained the queue")
        records = reader.read(expected=len(accepted), timeout=60)
    finally:
        if worker is not None:
            worker.stop()
        web.stop()
    delivered = [r.headers["event_id"].decode() for r in records if r.headers["event_id"].decode() in sent]
    assert sorted(delivered) == sorted(accepted)  # every accepted event, once; none of the refused ones
    assert len(accepted) == 6


def test_a_lost_decrement_lasts_at_most_one_reconcile_interval(
    default_routing: None, api_key: str, own_redis: str
) -> None:
    """A worker killed outright (SIGKILL) while it holds tasks, and decrements lost on top (as a Redis restart or a
    process killed between enqueue and count leaves them): within one reconcile interval the counter is again the
    number of events Redis holds, and the API admits what it refused because of the drift."""
    interval = 3.0
    env = {
        "REDIS_URL": own_redis,
        "CELERY_BROKER_URL": own_redis,
        "INGEST_MAX_QUEUE_DEPTH": "200",
        "INGEST_MAX_QUEUE_DELAY": "0",  # the killed worker's tasks wait: only the depth limit is under test here
        "INGEST_QUEUE_RECONCILE_INTERVAL": f"{interval}s",
        "PUBLISHER_BREAKER_RESET_TIMEOUT": "60s",
    }
    client = redis.Redis.from_url(own_redis)
    web = WebServer(workers=1, extra_env=env)
    worker = WorkerProcess(extra_env=env)
    try:
        # An open breaker defers every task: the worker holds the retries, unacknowledged, until it is killed.
        storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, client, namespace=breaker.NAMESPACE)
        pybreaker.CircuitBreaker(state_storage=storage, reset_timeout=60).open()
        for _ in range(3):
            response = post(web, api_key, {"events": [activity() for _ in range(20)]}, "/api/v1/events/batch")
            assert response.status_code == 202, response.text
        wait_until(  # each task received, deferred, its retry received and the task itself acknowledged
            lambda: (
                worker.output().count("] received") == 6 and client.llen("publish") == 0 and client.hlen("unacked") == 3
            ),
            timeout=60,
            what="the worker holds the retries of the three deferred tasks, and nothing else",
        )
        worker.stop(signal.SIGKILL)
        assert client.hlen("unacked") == 3  # the killed worker's tasks wait there for the visibility timeout
        assert int(client.get(queue.QUEUED_EVENTS_KEY) or 0) == events_held(client) == 60

        # A reconcile has just run (so the next is a whole interval away), then 150 decrements are lost.
        client.set(queue.RECONCILED_KEY, "1", px=int(interval * 1000))
        client.incrby(queue.QUEUED_EVENTS_KEY, 150)
        time.sleep(0.3)  # the web process's cached read of the counter expires
        refused = post(web, api_key, activity())
        assert refused.status_code == 503, refused.text
        assert "limit 200" in refused.json()["error"]

        wait_until(
            lambda: post(web, api_key, activity()).status_code == 202,
            timeout=interval * 4,
            what="an event accepted once the counter was reconciled",
        )
        assert int(client.get(queue.QUEUED_EVENTS_KEY) or 0) == events_held(client) == 61
    finally:
        worker.stop()
        web.stop()
        client.close()


@pytest.fixture
def workers_at_20_per_s(monkeypatch: pytest.MonkeyPatch) -> None:
    """The workers' capacity as measured at 20 events/s, kept so (no worker runs in these tests)."""
    monkeypatch.setattr(queue, "_measured", 20.0)
    monkeypatch.setattr(queue, "_trend", None)
    monkeypatch.setattr(queue, "_RATE_WINDOW", 3600.0)  # no worker here: keep the rate as measured
    monkeypatch.setattr(queue, "_reads", {})


def _post_batch_in_process(api_key: str, size: int, *, waited: float | None = None) -> Any:
    """A batch through Django's test client; with `waited`, its request reached the web process that long ago
    (as the load-shedding gate says of the requests it lets through)."""
    body = {"events": [activity() for _ in range(size)]}
    arrival = nullcontext() if waited is None else services.request_arrived(at=time.monotonic() - waited)
    with arrival:
        return Client().post(
            "/api/v1/events/batch",
            data=orjson.dumps(body),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Api-Key {api_key}",
        )


@pytest.mark.fastpath("celery_handoff")  # the in-process admission must enqueue into the test's own Redis
def test_the_admission_holds_the_delay_limit_exactly(
    default_routing: None, api_key: str, own_redis: str, workers_at_20_per_s: None
) -> None:
    """Workers measured at 20 events/s and a 5 s limit: the queue takes 100 events, counted by the admission's
    atomic reservation (not from a cached reading); a batch that would go past that is refused whole."""

    def post_batch(size: int) -> Any:
        return _post_batch_in_process(api_key, size)

    with override_settings(REDIS_URL=own_redis, CELERY_BROKER_URL=own_redis, INGEST_MAX_QUEUE_DELAY=5.0):
        config.redis._client = None
        try:
            assert post_batch(60).status_code == 202
            refused = post_batch(60)
            assert refused.status_code == 503, refused.content
            assert refused["Retry-After"] == "1"
            message = refused.json()["error"]
            assert "would wait more than 5 s" in message and "100 events" in message, message
            accepted = post_batch(40)
            assert accepted.status_code == 202, accepted.content
            client = redis.Redis.from_url(own_redis)
            assert int(client.get(queue.QUEUED_EVENTS_KEY) or 0) == events_held(client) == 100
            client.close()
            # Full, by a reading at most 0.2 s old: the next batch is refused before its body is parsed (a
            # refusal must cost the web tier little), so even a malformed one is answered 503, not 400.
            time.sleep(0.25)
            unparsed = Client().post(
                "/api/v1/events/batch",
                data=b'{"events": [',
                content_type="application/json",
                HTTP_AUTHORIZATION=f"Api-Key {api_key}",
            )
            assert unparsed.status_code == 503, unparsed.content
            assert "would wait more than 5 s" in unparsed.json()["error"]
        finally:
            config.redis._client = None


@pytest.mark.fastpath("celery_handoff")  # the in-process admission must enqueue into the test's own Redis
def test_time_a_request_already_waited_is_taken_from_its_queue_delay(
    default_routing: None, api_key: str, own_redis: str, workers_at_20_per_s: None
) -> None:
    """Workers measured at 20 events/s and a 5 s limit: the queue would take 100 events, but a request that
    reached the web process 3 s ago (waiting at the load-shedding gate, say) has 2 s left: room for 40, so with
    30 queued its 20 are refused, while the same 20 on time are accepted."""

    def post_batch(size: int, *, waited: float) -> Any:
        return _post_batch_in_process(api_key, size, waited=waited)

    with override_settings(REDIS_URL=own_redis, CELERY_BROKER_URL=own_redis, INGEST_MAX_QUEUE_DELAY=5.0):
        config.redis._client = None
        try:
            assert post_batch(30, waited=0.0).status_code == 202
            sent = time.monotonic()
            late = post_batch(20, waited=3.0)
            took = time.monotonic() - sent
            assert late.status_code == 503, late.content
            room = int(re.search(r"(\d+) events queued at most", late.json()["error"])[1])  # type: ignore[index]
            # 2 s of the 5 left, less what the request itself took before the admission looked (at most `took`)
            assert int(20 * (2.0 - took)) <= room <= 40, (late.json(), took)
            assert post_batch(20, waited=0.0).status_code == 202  # on time: room for 100
            client = redis.Redis.from_url(own_redis)
            assert int(client.get(queue.QUEUED_EVENTS_KEY) or 0) == events_held(client) == 50
            client.close()
        finally:
            config.redis._client = None


def test_a_web_tier_past_its_capacity_refuses_at_once_and_publishes_what_it_accepted(
    default_routing: None, api_key: str, celery_worker: WorkerProcess, kafka_reader: Any
) -> None:
    """More clients than the web process works for at once: those it cannot serve soon get 503 and Retry-After
    (ingestion.shedding) instead of queueing in the web server, every event it answered 202 reaches Kafka once,
    and a request after the flood is accepted again."""
    import threading

    env = {
        "INGEST_WEB_ACTIVE_REQUESTS": "1",
        "INGEST_WEB_MAX_WAIT": "4ms",
        "WEB_THREADS": "8",
        "INGEST_RATE_LIMIT": "1000000/s",
    }
    reader = kafka_reader("user.activities")
    web = WebServer(workers=1, extra_env=env)
    answers: list[tuple[str, int, str, str | None]] = []  # event id, status, error, Retry-After
    lock = threading.Lock()
    stop_at = time.monotonic() + 3.0

    failures: list[BaseException] = []  # a connection dropped without an answer, say

    def client() -> None:
        with requests.Session() as session:
            while time.monotonic() < stop_at:
                event = activity()
                try:
                    response = session.post(
                        f"{web.url}/api/v1/events",
                        data=orjson.dumps(event),
                        headers={"Content-Type": "application/json", "Authorization": f"Api-Key {api_key}"},
                        timeout=30,
                    )
                except requests.RequestException as exc:
                    with lock:
                        failures.append(exc)
                    return
                error = response.json().get("error", "") if response.status_code != 202 else ""
                with lock:
                    answers.append(
                        (event["event_id"], response.status_code, error, response.headers.get("Retry-After"))
                    )

    try:
        clients = [threading.Thread(target=client) for _ in range(48)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(timeout=60)
        metrics = requests.get(f"{web.url}/metrics", timeout=10).text
        time.sleep(0.5)  # an interval without refusals ends the shedding
        after = post(web, api_key, activity())
    finally:
        web.stop()

    assert failures == []  # every request answered, on a connection kept open (ingestion.shedding._drain)
    statuses = {status for _, status, _, _ in answers}
    assert statuses == {202, 503}, statuses
    refused = [answer for answer in answers if answer[1] == 503]
    assert all(retry_after == "1" for _, _, _, retry_after in refused)
    assert all("working at capacity" in error for _, _, error, _ in refused), refused[:3]
    shed = [
        line for line in metrics.splitlines() if line.startswith('ingestion_events_rejected_total{reason="web_busy"}')
    ]
    assert shed and float(shed[0].split()[-1]) > 0, shed
    assert after.status_code == 202, after.text

    accepted = [event_id for event_id, status, _, _ in answers if status == 202] + [after.json()["event_id"]]
    sent = {event_id for event_id, _, _, _ in answers} | set(accepted)
    records = reader.read(expected=len(accepted), timeout=60)
    delivered = [r.headers["event_id"].decode() for r in records if r.headers["event_id"].decode() in sent]
    assert sorted(delivered) == sorted(accepted)  # each accepted event once; none of the refused


def test_a_refused_request_keeps_its_connection_open(
    default_routing: None, api_key: str, celery_worker: WorkerProcess
) -> None:
    """A request refused at the load-shedding gate before its body arrived still gets its 503 on a connection the
    client may go on using (the gate reads the body first; left unread, granian would close the connection, and a
    client that had sent its next request on it would get no answer at all)."""
    import http.client

    env = {"INGEST_WEB_ACTIVE_REQUESTS": "1", "INGEST_WEB_MAX_WAIT": "50ms", "WEB_THREADS": "4"}
    web = WebServer(workers=1, extra_env=env)
    headers = {"Content-Type": "application/json", "Authorization": f"Api-Key {api_key}"}

    def send_headers(connection: http.client.HTTPConnection, body: bytes) -> None:
        connection.putrequest("POST", "/api/v1/events")
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            connection.putheader(name, value)
        connection.endheaders()

    holder = http.client.HTTPConnection("127.0.0.1", web.port, timeout=30)
    refused = http.client.HTTPConnection("127.0.0.1", web.port, timeout=30)
    try:
        held_body = orjson.dumps(activity())
        send_headers(holder, held_body)  # its request takes the only permit and waits for a body
        time.sleep(0.5)
        late_body = orjson.dumps(activity())
        send_headers(refused, late_body)
        time.sleep(0.3)  # past INGEST_WEB_MAX_WAIT: refused, its body not yet sent
        refused.send(late_body)
        answer = refused.getresponse()
        assert answer.status == 503, answer.read()
        assert "working at capacity" in orjson.loads(answer.read())["error"]
        assert not answer.will_close, answer.getheaders()
        socket_used = refused.sock
        refused.request("POST", "/api/v1/events", body=orjson.dumps(activity()), headers=headers)
        again = refused.getresponse()
        again.read()
        assert refused.sock is socket_used and socket_used is not None  # answered on the same connection
        assert again.status in (202, 503)

        holder.send(held_body)
        held = holder.getresponse()
        assert held.status == 202, held.read()
    finally:
        holder.close()
        refused.close()
        web.stop()
