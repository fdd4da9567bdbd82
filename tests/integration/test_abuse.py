"""Bad input, abuse and overload against the real web tier: clear 4xx, nothing enqueued, memory bounded, no
5xx but 503 with Retry-After, limits that hold under concurrency."""

from __future__ import annotations

import gzip
import secrets
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import requests
import zstandard
from prometheus_client.parser import text_string_to_metric_families

from config.redis import get_redis
from tests import factories
from tests.conftest import KafkaReader, WebServer, WorkerProcess

pytestmark = pytest.mark.django_db(transaction=True)
CORPUS = [
    orjson.loads(line) for line in (Path(__file__).parents[1] / "data" / "bad_inputs.jsonl").read_bytes().splitlines()
]


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "zstd": zstandard.ZstdCompressor().compress,
}


def _body(case: dict[str, Any]) -> tuple[str, bytes]:
    """The path and the body to send: built from the case, then compressed if it says "compress"."""
    path, body = _plain_body(case)
    if "compress" in case:
        body = COMPRESSORS[case["compress"]](body)
    return case.get("endpoint", path), body


def _plain_body(case: dict[str, Any]) -> tuple[str, bytes]:
    if "event" in case:
        return "/api/v1/events", orjson.dumps(case["event"])
    if "raw_event" in case:  # sent as written: integers beyond 64 bits must reach the server as digits
        return "/api/v1/events", case["raw_event"].encode()
    if "batch_of" in case:
        return "/api/v1/events/batch", orjson.dumps({"events": [factories.activity()] * case["batch_of"]})
    if "ndjson_of" in case:
        return "/api/v1/events/batch", b"\n".join([orjson.dumps(factories.activity())] * case["ndjson_of"])
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
    headers = {"Authorization": case.get("authorization", f"Api-Key {api_key}")}
    if case["content_type"]:
        headers["Content-Type"] = case["content_type"]
    if "content_encoding" in case:
        headers["Content-Encoding"] = case["content_encoding"]
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


def _headers(case: dict[str, Any], api_key: str) -> dict[str, str]:
    headers = {"Authorization": case.get("authorization", f"Api-Key {api_key}"), "Content-Type": case["content_type"]}
    if "content_encoding" in case:
        headers["Content-Encoding"] = case["content_encoding"]
    return headers


def test_the_corpus_leaves_the_service_up_with_bounded_memory(web_server: WebServer, api_key: str) -> None:
    headers = {"Authorization": f"Api-Key {api_key}"}
    for _ in range(2):  # warm up every code path first
        for case in CORPUS:
            path, body = _body(case)
            requests.post(f"{web_server.url}{path}", data=body, headers=_headers(case, api_key))
    before = _web_rss(web_server)
    for _ in range(5):
        for case in CORPUS:
            path, body = _body(case)
            requests.post(f"{web_server.url}{path}", data=body, headers=_headers(case, api_key))
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


# These bursts test the rate limiter alone: with the web tier's load-shedding gate on, a slow machine may shed part of
# a 100-request burst with 503 (web_busy) before the limiter sees it. The gate has its own tests (test_admission).
_GATE_OFF = {"INGEST_WEB_ACTIVE_REQUESTS": "0", "INGEST_WEB_ACTIVE_BATCHES": "0"}


def test_rate_limit_holds_under_a_concurrent_burst(api_key: str) -> None:
    server = WebServer(workers=2, extra_env={"INGEST_RATE_LIMIT": "10/min", **_GATE_OFF})
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
    server = WebServer(workers=2, extra_env={"INGEST_RATE_LIMIT": "500/hour", **_GATE_OFF})
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


# ---------------------------------------------------------------- failed authentication


def _metric(url: str, name: str, **labels: str) -> float:
    """One sample of /metrics (the server trusts one proxy: the forwarded address says loopback)."""
    text = requests.get(f"{url}/metrics", headers={"X-Forwarded-For": "127.0.0.1"}, timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"{name}{labels} is not in /metrics")


def _lookups(url: str) -> tuple[float, float]:
    """Database lookups of API keys so far: (valid, invalid)."""
    name = "ingestion_api_key_lookups_total"
    return _metric(url, name, result="valid"), _metric(url, name, result="invalid")


def _bogus_key() -> str:
    return f"{secrets.token_hex(4)}.{secrets.token_hex(16)}"  # the shape of a real key: 8 + "." + 32


def _post_as(url: str, session: requests.Session, key: str, address: str) -> requests.Response:
    return session.post(
        f"{url}/api/v1/events",
        data=orjson.dumps(factories.activity()),
        headers={"Content-Type": "application/json", "Authorization": f"Api-Key {key}", "X-Forwarded-For": address},
        timeout=30,
    )


@pytest.fixture
def auth_failure_counters() -> Iterator[None]:
    yield
    keys = list(get_redis().scan_iter(match="ingest:authfail:*"))
    if keys:
        get_redis().delete(*keys)


def test_a_bogus_key_flood_keeps_good_keys_cached_and_malformed_keys_off_the_database(
    api_key: str, tmp_path: Path, auth_failure_counters: None
) -> None:
    """10,050 distinct well-formed bogus keys, each from its own address (a botnet behind the one trusted proxy,
    so no address reaches the failure limit), against one web process: the producer's key stays cached (no
    second database lookup), each bogus key is looked up once, and malformed keys never reach the database."""
    server = WebServer(
        workers=1,
        extra_env={
            "NUM_PROXIES": "1",
            "INGEST_KEY_CACHE_SECONDS": "10m",  # the flood takes longer than the default 5 s
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        },
    )
    producer = requests.Session()
    try:
        assert _post_as(server.url, producer, api_key, "198.51.100.1").status_code == 202
        assert _lookups(server.url) == (1, 0)

        flood = 10_050
        base = secrets.randbelow(200) + 20

        def bogus(i: int) -> requests.Response:
            # A connection per request: a kept-alive one the server closes just as the client reuses it fails
            # the request before it is read, and a retried POST would blur the lookup count.
            address = f"10.{base}.{i >> 8 & 255}.{i & 255}" if i < 65536 else "10.255.255.255"
            with requests.Session() as session:
                return _post_as(server.url, session, _bogus_key(), address)

        with ThreadPoolExecutor(8) as pool:
            answers = Counter((r.status_code, r.json()["error"]) for r in pool.map(bogus, range(flood)))
        assert answers == {(401, "Invalid, revoked or expired API key."): flood}, answers

        assert _post_as(server.url, producer, api_key, "198.51.100.1").status_code == 202
        assert _lookups(server.url) == (1, flood)  # the good key was served from the cache

        repeated = _bogus_key()
        for _ in range(3):  # the same bogus key again and again: looked up once (the negative cache)
            assert _post_as(server.url, producer, repeated, "198.51.100.2").status_code == 401
        assert _lookups(server.url) == (1, flood + 1)

        malformed = [
            "nope",
            "nope.nope",
            "a" * 300,
            f"{'x' * 8}.{'y' * 31}",
            f"{'x' * 8}.{'y' * 31}!",
            "abcdefgh_" + "k" * 32,
        ]
        for key in malformed:
            response = _post_as(server.url, producer, key, "198.51.100.3")
            assert response.status_code == 401, key
            assert "Malformed API key" in response.json()["error"], key
        assert _lookups(server.url) == (1, flood + 1)  # no database query for any of them
    finally:
        server.stop()


def test_failed_authentications_from_one_address_are_throttled_across_processes(
    api_key: str, auth_failure_counters: None
) -> None:
    """The limit is per client address, counted in Redis: two web processes together answer 401 exactly five
    times, then 429 with Retry-After in the API's error shape. Other addresses are not affected."""
    server = WebServer(workers=2, extra_env={"NUM_PROXIES": "1", "INGEST_AUTH_FAILURES_PER_MINUTE": "5"})
    attacker = f"203.0.113.{secrets.randbelow(250) + 1}"
    neighbour = f"198.51.100.{secrets.randbelow(250) + 1}"
    try:
        # Concurrent, so both web processes take some of them; malformed and well-formed bogus keys alike.
        keys = [_bogus_key() if i % 2 else "not-a-key" for i in range(30)]
        with ThreadPoolExecutor(10) as pool:
            responses = list(pool.map(lambda k: _post_as(server.url, requests.Session(), k, attacker), keys))
        codes = Counter(r.status_code for r in responses)
        assert codes == {401: 5, 429: 25}, codes
        for response in responses:
            if response.status_code == 429:
                assert 1 <= int(response.headers["Retry-After"]) <= 61
                assert "Too many failed authentications" in response.json()["error"]
        assert _post_as(server.url, requests.Session(), _bogus_key(), neighbour).status_code == 401
        assert _post_as(server.url, requests.Session(), api_key, neighbour).status_code == 202
        # Still refused later in the window, without looking the key up.
        again = _post_as(server.url, requests.Session(), _bogus_key(), attacker)
        assert again.status_code == 429 and again.headers["Retry-After"]
    finally:
        server.stop()
