"""Bad input, abuse and overload against the real web tier: clear 4xx, nothing enqueued, memory bounded, no
5xx but 503 with Retry-After, limits that hold under concurrency."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import requests

from config.redis import get_redis
from tests import factories
from tests.conftest import KafkaReader, WebServer, WorkerProcess

pytestmark = pytest.mark.django_db(transaction=True)
CORPUS = [
    orjson.loads(line) for line in (Path(__file__).parents[1] / "data" / "bad_inputs.jsonl").read_bytes().splitlines()
]


def _body(case: dict[str, Any]) -> tuple[str, bytes]:
    if "event" in case:
        return "/api/v1/events", orjson.dumps(case["event"])
    if "batch_of" in case:
        return "/api/v1/events/batch", orjson.dumps({"events": [factories.activity()] * case["batch_of"]})
    if "body_hex" in case:
        return "/api/v1/events/batch", bytes.fromhex(case["body_hex"])
    if "generate" in case:
        g = case["generate"]
        text = g.get("prefix", "") + g["repeat"] * g["times"] + g.get("middle", "")
        text += g["then"] * (g["times"] if g["then"] else 0)
        return "/api/v1/events/batch", text.encode()
    return "/api/v1/events/batch", case["body"].encode("utf-8", "surrogatepass")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _web_rss(server: WebServer) -> int:
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()
    return sum(_rss_kib(int(pid)) for pid in [str(server.proc.pid), *children])


@pytest.mark.parametrize("case", CORPUS, ids=[c["name"] for c in CORPUS])
def test_bad_input_gets_a_clear_4xx_and_enqueues_nothing(
    web_server: WebServer, api_key: str, case: dict[str, Any]
) -> None:
    path, body = _body(case)
    headers = {"Authorization": f"Api-Key {api_key}"}
    if case["content_type"]:
        headers["Content-Type"] = case["content_type"]
    queued_before = get_redis().llen("publish")
    response = requests.post(f"{web_server.url}{path}", data=body, headers=headers, timeout=30)
    assert response.status_code == case["status"], response.text[:500]
    assert response.headers["Content-Type"] == "application/json"
    answer = response.json()
    if "error" in case:
        assert case["error"] in answer["error"]
    if "path" in case:
        # A body error lists its paths in "errors"; a batch with no valid event lists them per event.
        paths = {e["path"] for e in answer.get("errors", [])}
        paths |= {e["path"] for result in answer.get("results", []) for e in result["errors"]}
        assert case["path"] in paths, str(answer)[:500]
    assert get_redis().llen("publish") == queued_before


def test_the_corpus_leaves_the_service_up_with_bounded_memory(web_server: WebServer, api_key: str) -> None:
    headers = {"Authorization": f"Api-Key {api_key}"}
    for _ in range(2):  # warm up every code path first
        for case in CORPUS:
            path, body = _body(case)
            requests.post(
                f"{web_server.url}{path}", data=body, headers=headers | {"Content-Type": case["content_type"]}
            )
    before = _web_rss(web_server)
    for _ in range(5):
        for case in CORPUS:
            path, body = _body(case)
            requests.post(
                f"{web_server.url}{path}", data=body, headers=headers | {"Content-Type": case["content_type"]}
            )
    growth_mib = (_web_rss(web_server) - before) / 1024
    assert growth_mib < 64, f"web tier grew {growth_mib:.0f} MiB over 5 passes of the corpus"
    ok = requests.post(
        f"{web_server.url}/api/v1/events",
        data=orjson.dumps(factories.activity()),
        headers=headers | {"Content-Type": "application/json"},
    )
    assert ok.status_code == 202


def _burst(url: str, key: str, bodies: list[bytes], path: str = "/api/v1/events") -> list[requests.Response]:
    responses: list[requests.Response] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(bodies))

    def send(body: bytes) -> None:
        barrier.wait()
        response = requests.post(
            f"{url}{path}",
            data=body,
            headers={"Content-Type": "application/json", "Authorization": f"Api-Key {key}"},
            timeout=30,
        )
        with lock:
            responses.append(response)

    threads = [threading.Thread(target=send, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return responses


def test_rate_limit_holds_under_a_concurrent_burst(api_key: str) -> None:
    server = WebServer(workers=2, extra_env={"INGEST_RATE_LIMIT": "10/min"})
    try:
        responses = _burst(server.url, api_key, [orjson.dumps(factories.activity()) for _ in range(50)])
    finally:
        server.stop()
    codes = Counter(r.status_code for r in responses)
    # Under 200 per window every request is counted in Redis: no overshoot at all, even across processes.
    assert codes[202] == 10, codes
    assert codes[429] == 40, codes
    assert all(int(r.headers["Retry-After"]) >= 1 for r in responses if r.status_code == 429)


def test_rate_limit_leases_never_overshoot_across_processes(api_key: str) -> None:
    """500/hour: each web process leases 5 at a time from Redis and grants them without a round trip. Over 600
    requests to two processes: never more than the limit, at most 4 fewer per process (an unused lease)."""
    server = WebServer(workers=2, extra_env={"INGEST_RATE_LIMIT": "500/hour"})
    try:
        responses = []
        for _ in range(6):
            responses += _burst(server.url, api_key, [orjson.dumps(factories.activity()) for _ in range(100)])
    finally:
        server.stop()
    codes = Counter(r.status_code for r in responses)
    assert set(codes) == {202, 429}, codes
    assert 500 - 2 * 4 <= codes[202] <= 500, codes
    assert all(int(r.headers["Retry-After"]) >= 1 for r in responses if r.status_code == 429)


def test_fifty_concurrent_resends_publish_once(
    default_routing: None, celery_worker: WorkerProcess, web_server: WebServer, api_key: str, kafka_reader: Any
) -> None:
    reader: KafkaReader = kafka_reader("user.attempts")
    event = orjson.dumps(factories.attempt(quality=1))
    responses = _burst(web_server.url, api_key, [event] * 50)
    statuses = Counter(r.json()["status"] for r in responses if r.status_code == 202)
    assert statuses["accepted"] == 1, statuses
    assert all(r.status_code in (202, 503) for r in responses)
    event_id = next(r.json()["event_id"] for r in responses if r.status_code == 202)
    time.sleep(1)
    records = [r for r in reader.read(expected=1, settle=1.5) if r.headers["event_id"].decode() == event_id]
    assert len(records) == 1


def test_overload_gets_503_with_retry_after_and_the_queue_stays_bounded(api_key: str) -> None:
    """Three times what the (absent) workers can take: the API refuses the excess instead of queueing it."""
    redis_url = "redis://127.0.0.1:6380/10"
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    limit = 2000
    server = WebServer(
        workers=2,
        extra_env={"REDIS_URL": redis_url, "INGEST_MAX_QUEUE_DEPTH": str(limit), "INGEST_RATE_LIMIT": "100000/s"},
    )
    codes: Counter[int] = Counter()
    missing_retry_after = 0
    depth_seen = 0
    lock = threading.Lock()

    def client_loop() -> None:
        nonlocal missing_retry_after
        session = requests.Session()
        headers = {"Content-Type": "application/json", "Authorization": f"Api-Key {api_key}"}
        for _ in range(8):
            body = orjson.dumps({"events": [factories.activity() for _ in range(100)]})
            response = session.post(f"{server.url}/api/v1/events/batch", data=body, headers=headers, timeout=30)
            with lock:
                codes[response.status_code] += 1
                if response.status_code == 503 and "Retry-After" not in response.headers:
                    missing_retry_after += 1

    try:
        threads = [threading.Thread(target=client_loop) for _ in range(8)]  # 6,400 events: over 3x the limit
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            depth_seen = max(depth_seen, int(client.get("publisher:queued-events") or 0))
            time.sleep(0.01)
        for t in threads:
            t.join()
    finally:
        server.stop()
        client.flushdb()
    assert set(codes) <= {202, 503}, codes
    assert codes[503] > 0 and codes[202] > 0, codes
    assert missing_retry_after == 0
    # Admission is an atomic reservation in Redis: the limit holds exactly, whatever the concurrency.
    assert depth_seen <= limit, depth_seen
