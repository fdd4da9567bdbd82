"""Metrics and health across processes, against the real services.

A small production-shaped stack (the web server with two workers, a Celery worker with two pool processes, one
private prometheus multiprocess directory) takes real HTTP traffic; /metrics of any web worker must then count
exactly what went through all four processes, pass `promtool check metrics`, and be scraped by a real
Prometheus server. The stack consumes its own Celery queue and keeps its statistics under its own Redis prefix
(a generated settings module), so other workers of the session cannot take its tasks and the counts are exact.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from django.conf import settings
from django.core.management import call_command
from django.test import Client
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from config.redis import get_redis
from publisher import breaker, health, stats
from tests import factories
from tests.conftest import WebServer, _test_database_url

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
PROMTOOL = "/usr/bin/promtool"
PROMETHEUS = "/usr/bin/prometheus"
ENDPOINTS = ["/metrics", "/metrics/prometheus", "/metrics/publisher", "/metrics/publisher/health"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _topics() -> list[str]:
    return [
        settings.KAFKA_TOPIC_ATTEMPTS,
        settings.KAFKA_TOPIC_SESSIONS,
        settings.KAFKA_TOPIC_PLACEMENTS,
        settings.KAFKA_TOPIC_ACTIVITIES,
        settings.KAFKA_TOPIC_ML_TRAINING,
    ]


# ------------------------------------------------------------------------------------------------ the stack


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, timeout: float = 30) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)


@dataclass
class Stack:
    url: str
    multiproc_dir: Path
    queue: str
    stats_prefix: str
    procs: list[Proc] = field(default_factory=list)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=10, **kwargs)

    def scrape(self) -> str:
        response = self.get("/metrics")
        assert response.status_code == 200, response.text[:500]
        return response.text

    def diagnostics(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.output()}" for p in self.procs)


def _spawn(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> Proc:
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return Proc(name, popen, log_path)


def _wait(condition: Callable[[], bool], *, timeout: float, what: str, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited early:\n{proc.output()}")
        try:
            if condition():
                return
        except (requests.RequestException, OSError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}" + (f":\n{proc.output()}" if proc else ""))


@pytest.fixture(scope="module")
def stack(django_db_setup: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("metrics-stack")
    multiproc = tmp / "prometheus"
    multiproc.mkdir()
    suffix = uuid.uuid4().hex[:8]
    queue = f"publish-metrics-{suffix}"
    prefix = f"publisher:stats:test-{suffix}"
    (tmp / "metrics_stack_settings.py").write_text(
        "from config.settings import *  # noqa: F403\n"
        f"CELERY_TASK_DEFAULT_QUEUE = {queue!r}\n"
        f"CELERY_TASK_ROUTES = {{'publisher.*': {{'queue': {queue!r}}}}}\n"
        f"PUBLISHER_STATS_KEY_PREFIX = {prefix!r}\n"
    )
    env = os.environ | {
        "DATABASE_URL": _test_database_url(),
        "DJANGO_SETTINGS_MODULE": "metrics_stack_settings",
        "PYTHONPATH": os.pathsep.join([str(tmp), str(ROOT)]),
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        "PYTHONUNBUFFERED": "1",
    }
    port = _free_port()
    result = Stack(url=f"http://127.0.0.1:{port}", multiproc_dir=multiproc, queue=queue, stats_prefix=prefix)
    try:
        worker = _spawn(
            "celery",
            [
                sys.executable, "-m", "celery", "-A", "config", "worker", "--queues", queue,
                "--concurrency", "2", "--pool", "prefork", "--loglevel", "INFO",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
                "--hostname", f"metrics-{suffix}@%h",
            ],
            env, tmp,
        )  # fmt: skip
        result.procs.append(worker)
        web = _spawn(
            "web",
            [
                sys.executable, "-m", "config.serve", "--bind", f"127.0.0.1:{port}", "--workers", "2",
                "--shutdown-timeout", "5",
            ],
            env, tmp,
        )  # fmt: skip
        result.procs.append(web)
        _wait(lambda: " ready." in worker.output(), timeout=60, what="the celery worker", proc=worker)
        _wait(lambda: result.get("/metrics").status_code == 200, timeout=60, what="the web server", proc=web)
        yield result
    finally:
        for proc in reversed(result.procs):
            proc.stop()
        client = get_redis()
        client.delete(queue, f"_kombu.binding.{queue}")
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)


# --------------------------------------------------------------------------------------------- traffic


@dataclass
class Sent:
    event_ids: set[str]
    by_type: Counter[str]
    requests: int = 0


def _api_key(name: str) -> str:
    from rest_framework_api_key.models import APIKey

    _, key = APIKey.objects.create_key(name=name)
    return str(key)


def _mixed_events(scale: int = 1) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Events of every type and the records the seed's rules send to each topic."""
    events = (
        [factories.attempt(quality=5) for _ in range(6 * scale)]
        + [factories.attempt(quality=2) for _ in range(4 * scale)]
        + [factories.session() for _ in range(4 * scale)]
        + [factories.placement(completed=True) for _ in range(3 * scale)]
        + [factories.activity() for _ in range(5 * scale)]
    )
    expected = Counter(
        {
            settings.KAFKA_TOPIC_ATTEMPTS: 10 * scale,
            settings.KAFKA_TOPIC_ML_TRAINING: 6 * scale + 3 * scale,
            settings.KAFKA_TOPIC_SESSIONS: 4 * scale,
            settings.KAFKA_TOPIC_PLACEMENTS: 3 * scale,
            settings.KAFKA_TOPIC_ACTIVITIES: 5 * scale,
        }
    )
    return events, expected


def _post_batches(base_url: str, key: str, events: list[dict[str, Any]], *, batch: int = 3) -> Sent:
    batches = [events[i : i + batch] for i in range(0, len(events), batch)]

    def post(chunk: list[dict[str, Any]]) -> dict[str, Any]:
        response = requests.post(
            f"{base_url}/api/v1/events/batch",
            json={"events": chunk},
            headers={"Authorization": f"Api-Key {key}"},
            timeout=30,
        )
        assert response.status_code == 202, response.text
        return dict(response.json())

    # Four at once reach both web workers, and never more batches than one process works on at once
    # (INGEST_WEB_ACTIVE_BATCHES), so none waits at the load-shedding gate on a slow machine.
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(post, batches))
    ids: set[str] = set()
    for answer in answers:
        assert answer["accepted"] == len(answer["results"]), answer
        ids.update(str(r["event_id"]) for r in answer["results"])
    by_type = Counter(str(e["event_type"]) for e in events)
    return Sent(event_ids=ids, by_type=by_type, requests=len(batches))


def _read_own_records(reader: Any, sent: Sent, expected: Counter[str], timeout: float = 30) -> Counter[str]:
    """Records of our own events (the topics are shared with other suites), with a short settle for extras."""
    got: Counter[str] = Counter()

    def take(records: list[Any]) -> None:
        got.update(r.topic for r in records if r.headers.get("event_id", b"").decode() in sent.event_ids)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and got.total() < expected.total():
        take(reader.read(expected=1, timeout=1.0, settle=0.2))
    take(reader.read(expected=10**9, timeout=1.0))
    return got


# ------------------------------------------------------------------------------------------ scrape parsing


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def _sum(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and all(dict(sample_labels).get(k) == v for k, v in labels.items())
    )


def _per_process(directory: Path, name: str) -> dict[str, float]:
    """The value of a counter in each process's own file (the files are named after the process)."""
    totals: dict[str, float] = {}
    for path in directory.glob("counter_*.db"):
        process = path.stem.split("_", 1)[1]
        for family in MultiProcessCollector.merge([str(path)], accumulate=True):
            for sample in family.samples:
                if sample.name == name:
                    totals[process] = totals.get(process, 0.0) + sample.value
    return totals


# --------------------------------------------------------------------------------------------------- tests


def test_metrics_count_traffic_through_two_web_and_two_worker_processes(
    stack: Stack, default_routing: None, kafka_reader: Any
) -> None:
    key = _api_key("metrics-multiprocess")
    before = _samples(stack.scrape())
    accepted_before = _per_process(stack.multiproc_dir, "ingestion_events_accepted_total")
    published_before = _per_process(stack.multiproc_dir, "publisher_events_published_total")
    reader = kafka_reader(*_topics())
    events, expected = _mixed_events(scale=3)

    sent = _post_batches(stack.url, key, events)

    assert len(sent.event_ids) == len(events)
    assert _read_own_records(reader, sent, expected) == expected, stack.diagnostics()

    def published_delta() -> Counter[str]:
        now = _samples(stack.scrape())
        return Counter(
            {
                topic: int(
                    _sum(now, "publisher_events_published_total", topic=topic)
                    - _sum(before, "publisher_events_published_total", topic=topic)
                )
                for topic in expected
            }
        )

    # The worker bumps its counter right after Kafka's acknowledgement; give it a moment to catch up.
    _wait(lambda: published_delta() == expected, timeout=15, what=f"published counters to reach {expected}")
    after = _samples(stack.scrape())
    assert published_delta() == expected
    for event_type, count in sent.by_type.items():
        delta = _sum(after, "ingestion_events_accepted_total", event_type=event_type) - _sum(
            before, "ingestion_events_accepted_total", event_type=event_type
        )
        assert delta == count, event_type
    accepted = _sum(after, "ingestion_events_accepted_total") - _sum(before, "ingestion_events_accepted_total")
    assert accepted == len(events)
    latency = _sum(after, "publisher_publish_latency_seconds_count") - _sum(
        before, "publisher_publish_latency_seconds_count"
    )
    assert latency == sum(expected.values())
    # The event API has its own request histogram; django-prometheus' per-request series leave it out (cost)
    # but still count the other paths, such as these scrapes.
    answered = _sum(after, "ingestion_request_duration_seconds_count", endpoint="batch", status="202") - _sum(
        before, "ingestion_request_duration_seconds_count", endpoint="batch", status="202"
    )
    assert answered == sent.requests
    by_view = "django_http_requests_latency_seconds_by_view_method_count"
    assert _sum(after, by_view, view="ingest-batch") == _sum(before, by_view, view="ingest-batch")
    assert _sum(after, by_view, view="prometheus-django-metrics") > _sum(
        before, by_view, view="prometheus-django-metrics"
    )

    # The totals really are sums over several processes: both web workers accepted, both pool processes published.
    # The kernel hands each connection to whichever web worker accepts first, so a small load can land on one of
    # them (seen once in CI: 22 requests, all on one); more of the same load is sent until both took some.
    for _ in range(20):
        accepted_after = _per_process(stack.multiproc_dir, "ingestion_events_accepted_total")
        published_after = _per_process(stack.multiproc_dir, "publisher_events_published_total")
        web = {p for p, v in accepted_after.items() if v > accepted_before.get(p, 0)}
        pool = {p for p, v in published_after.items() if v > published_before.get(p, 0)}
        if len(web) >= 2 and len(pool) >= 2:
            break
        more, more_expected = _mixed_events()
        more_sent = _post_batches(stack.url, key, more)
        assert _read_own_records(reader, more_sent, more_expected) == more_expected, stack.diagnostics()
    assert len(web) >= 2, accepted_after
    assert len(pool) >= 2, published_after
    assert not web & pool


def test_scrape_passes_promtool_and_has_the_scrape_time_gauges(stack: Stack) -> None:
    text = stack.scrape()
    check = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30, check=False
    )
    assert check.returncode == 0, (check.stdout + check.stderr).decode()
    assert not check.stdout.strip() and not check.stderr.strip(), (check.stdout + check.stderr).decode()
    samples = _samples(text)
    assert ("ingestion_queue_depth", ()) in samples
    assert ("dlq_pending_entries", ()) in samples
    assert samples[("publisher_circuit_breaker_state", ())] in {0.0, 1.0, 2.0}
    for name in ("ingestion_queue_depth", "publisher_circuit_breaker_state", "dlq_pending_entries"):
        assert text.count(f"# TYPE {name} gauge") == 1, name
    assert "# TYPE publisher_events_published_total counter" in text
    assert "# TYPE publisher_publish_latency_seconds histogram" in text
    alias = stack.get("/metrics/prometheus")
    assert alias.status_code == 200
    assert alias.headers["Content-Type"].startswith("text/plain")
    assert "publisher_circuit_breaker_state" in alias.text


def test_prometheus_server_scrapes_the_pipeline_and_answers_promql(
    stack: Stack, default_routing: None, kafka_reader: Any, tmp_path: Path
) -> None:
    key = _api_key("metrics-prometheus")
    reader = kafka_reader(*_topics())
    events, expected = _mixed_events()
    sent = _post_batches(stack.url, key, events)
    assert _read_own_records(reader, sent, expected) == expected
    _wait(
        lambda: _sum(_samples(stack.scrape()), "publisher_events_published_total") >= sum(expected.values()),
        timeout=15,
        what="published counters",
    )
    scraped_total = _sum(_samples(stack.scrape()), "publisher_events_published_total")

    port = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: ingest\n"
        "    metrics_path: /metrics\n"
        f"    static_configs: [{{targets: ['{stack.url.removeprefix('http://')}']}}]\n"
    )
    log_path = tmp_path / "prometheus.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [
                PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    api = f"http://127.0.0.1:{port}"
    try:

        def query(expr: str) -> list[dict[str, Any]]:
            response = requests.get(f"{api}/api/v1/query", params={"query": expr}, timeout=5)
            body = response.json()
            assert body["status"] == "success", body
            return list(body["data"]["result"])

        _wait(lambda: requests.get(f"{api}/-/ready", timeout=2).status_code == 200, timeout=30, what="prometheus")
        _wait(lambda: bool(query('up{job="ingest"} == 1')), timeout=30, what="a successful scrape")
        _wait(lambda: bool(query("publisher_events_published_total")), timeout=30, what="the published series")
        series = query("publisher_events_published_total")
        topics = {s["metric"]["topic"] for s in series}
        assert set(expected) <= topics
        assert all(s["metric"]["job"] == "ingest" for s in series)
        total = query("sum(publisher_events_published_total)")
        assert float(total[0]["value"][1]) >= scraped_total
        assert query("publisher_circuit_breaker_state")
        p95 = query("histogram_quantile(0.95, sum by (le) (publisher_publish_latency_seconds_bucket))")
        assert p95 and 0 < float(p95[0]["value"][1]) < 60
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(10)
        if sys.exc_info()[0] is not None:
            print(log_path.read_text(errors="replace")[-3000:])


def test_publisher_json_counts_what_reached_kafka(stack: Stack, default_routing: None, kafka_reader: Any) -> None:
    key = _api_key("metrics-json")
    before = stack.get("/metrics/publisher").json()
    reader = kafka_reader(*_topics())
    events, expected = _mixed_events(scale=2)
    sent = _post_batches(stack.url, key, events)
    assert _read_own_records(reader, sent, expected) == expected

    def delta() -> int:
        return int(stack.get("/metrics/publisher").json()["events_published"]) - int(before["events_published"])

    _wait(lambda: delta() == sum(expected.values()), timeout=15, what="the publisher statistics")
    after = stack.get("/metrics/publisher").json()
    assert delta() == sum(expected.values())
    for topic, count in expected.items():
        assert after["topics"].get(topic, 0) - before["topics"].get(topic, 0) == count, topic
    assert after["events_failed"] == before["events_failed"]
    assert after["events_dlq"] == before["events_dlq"]
    assert after["success_rate"] == 1.0 and after["error_rate"] == 0.0 and after["dlq_rate"] == 0.0
    assert after["avg_latency_ms"] > 0
    assert after["p95_latency_ms"] > 0
    assert after["seconds_since_last_publish"] < 30
    assert after["last_publish_at"].endswith("Z")
    assert after["breaker_state"] in {"closed", "half-open", "open"}
    assert isinstance(after["queue_depth"], int)
    assert isinstance(after["dlq_pending"], int)
    assert after["recent"]["published"] >= sum(expected.values())
    assert after["recent"]["p95_latency_ms"] is not None


@pytest.fixture
def quiet_pipeline(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Health judged on this test's own state: fresh statistics, an empty queue, a closed breaker (other tests
    of the session may have dead-lettered, left tasks queued, or opened the shared breaker)."""
    settings.PUBLISHER_STATS_KEY_PREFIX = prefix = f"publisher:stats:test-{uuid.uuid4().hex[:8]}"
    settings.CELERY_TASK_DEFAULT_QUEUE = f"publish-health-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr("publisher.queue.depth", lambda fresh=False: 0)
    breaker.reset()
    yield
    keys = list(get_redis().scan_iter(match=f"{prefix}:*"))
    if keys:
        get_redis().delete(*keys)


def test_health_turns_unhealthy_when_kafka_is_unreachable(client: Client, settings: Any, quiet_pipeline: None) -> None:
    # Kafka is shared with other suites and must not be stopped: point the check at a closed port instead.
    reachable = list(settings.KAFKA_BROKERS)
    settings.KAFKA_BROKERS = [f"127.0.0.1:{_free_port()}"]
    started = time.monotonic()
    response = client.get("/metrics/publisher/health")
    assert time.monotonic() - started < 2.0
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["checks"]["kafka"]["status"] == "unhealthy"
    assert "no broker answered" in body["checks"]["kafka"]["detail"]

    settings.KAFKA_BROKERS = reachable
    response = client.get("/metrics/publisher/health")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "healthy", body
    assert set(body["checks"]) == {"kafka", "redis", "postgres", "breaker", "activity", "error_rate", "dlq_rate"}
    for name, check in body["checks"].items():
        assert check["status"] == "healthy", (name, check)
        assert check["detail"]
    assert "answered metadata" in body["checks"]["kafka"]["detail"]


def test_health_is_degraded_by_error_and_dlq_rates(settings: Any, quiet_pipeline: None) -> None:
    settings.PUBLISHER_HEALTH_ERROR_RATE = 0.05
    settings.PUBLISHER_HEALTH_DLQ_RATE = 0.01
    stats.record_batch(published_by_topic={"t.one": 90}, failed=10, dead_lettered=5, latencies_s=[0.01] * 90)
    report = health.evaluate()
    assert report["status"] == "degraded", report
    assert report["checks"]["error_rate"]["status"] == "degraded"
    assert "10.00%" in report["checks"]["error_rate"]["detail"]
    assert report["checks"]["dlq_rate"]["status"] == "degraded"
    assert report["checks"]["kafka"]["status"] == "healthy"
    assert report["checks"]["activity"]["status"] == "healthy"


def test_health_reports_stalled_workers_and_an_open_breaker(
    settings: Any, quiet_pipeline: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.PUBLISHER_HEALTH_STALL_SECONDS = 60
    stats.record_batch(published_by_topic={"t.one": 1}, latencies_s=[0.01], now=time.time() - 600)
    get_redis().rpush(settings.CELERY_TASK_DEFAULT_QUEUE, b"{}")  # a task nobody takes
    try:
        report = health.evaluate()
        assert report["checks"]["activity"]["status"] == "unhealthy", report
        assert "workers" in report["checks"]["activity"]["detail"]
        assert report["status"] == "unhealthy"
    finally:
        get_redis().delete(settings.CELERY_TASK_DEFAULT_QUEUE)
    monkeypatch.setattr("publisher.breaker.current_state", lambda: "open")
    settings.PUBLISHER_STATS_KEY_PREFIX += "-2"  # a new probe key: no cached result
    report = health.evaluate()
    assert report["checks"]["breaker"]["status"] == "unhealthy"
    assert report["checks"]["activity"]["status"] == "healthy"
    assert report["status"] == "unhealthy"


def test_stats_aggregate_batches_in_redis(settings: Any) -> None:
    settings.PUBLISHER_STATS_KEY_PREFIX = prefix = f"publisher:stats:test-{uuid.uuid4().hex[:8]}"
    now = time.time()
    try:
        stats.record_batch(
            published_by_topic={"a.topic": 3, "b.topic": 1}, failed=1, retried=1, latencies_s=[0.004, 0.02, 0.02, 0.2]
        )
        stats.record_batch(published_by_topic={"a.topic": 2}, dead_lettered=1, latencies_s=[0.04, 0.04])
        stats.record_batch(published_by_topic={})  # nothing happened: no write at all
        snap = stats.snapshot()
        assert snap["events_published"] == 6
        assert snap["events_failed"] == 1 and snap["events_retried"] == 1 and snap["events_dlq"] == 1
        assert snap["batches"] == 2
        assert snap["topics"] == {"a.topic": 5, "b.topic": 1}
        assert snap["success_rate"] == pytest.approx(6 / 7, abs=1e-6)
        assert snap["error_rate"] == pytest.approx(1 / 7, abs=1e-6)
        assert snap["dlq_rate"] == pytest.approx(1 / 7, abs=1e-6)
        assert snap["mean_latency_ms"] == pytest.approx((4 + 20 + 20 + 200 + 40 + 40) / 6, abs=0.01)
        assert 4 < snap["avg_latency_ms"] < 200  # EMA, per event, alpha 0.1
        assert 100 <= snap["p95_latency_ms"] <= 200
        assert abs(snap["last_publish_ts"] - now) < 5
        assert snap["recent"]["published"] == 6 and snap["recent"]["topics"] == {"a.topic": 5, "b.topic": 1}
        points = stats.timeseries(minutes=60)
        assert len(points) == 60 and points[-1]["t"] == int(time.time() // 60) * 60
        assert sum(p["published"] for p in points) == 6
        ttl = get_redis().ttl(stats.minute_key(points[-1]["t"]))
        assert 0 < ttl <= stats.BUCKET_TTL_SECONDS
        assert get_redis().ttl(stats.totals_key()) == -1  # totals are kept
    finally:
        keys = list(get_redis().scan_iter(match=f"{prefix}:*"))
        if keys:
            get_redis().delete(*keys)


def test_percentile_interpolates_inside_buckets() -> None:
    buckets = [0] * (len(stats.LATENCY_BOUNDS_MS) + 1)
    assert stats.percentile(buckets, 0.95) is None
    buckets[stats.bucket_index(15)] = 100  # all in (10, 25]
    assert stats.percentile(buckets, 0.5) == pytest.approx(17.5)
    buckets[-1] = 100  # half beyond the last bound
    assert stats.percentile(buckets, 0.99) == stats.LATENCY_BOUNDS_MS[-1]


@pytest.mark.parametrize("path", ENDPOINTS)
def test_metrics_access_modes(path: str, settings: Any, django_user_model: Any) -> None:
    remote = Client(REMOTE_ADDR="203.0.113.9")
    local = Client(REMOTE_ADDR="127.0.0.1")
    local6 = Client(REMOTE_ADDR="::1")
    ok = {200, 503}  # health may legitimately be unhealthy; access is what is tested
    is_health = path.endswith("/health")

    def granted(response: Any) -> None:
        assert response.status_code in ok, response.content[:300]
        if is_health:
            assert all("detail" in check for check in response.json()["checks"].values())

    def refused(response: Any, status: int) -> None:
        if is_health:  # anyone gets the statuses, only those METRICS_ACCESS admits get the details
            assert response.status_code in ok, response.content[:300]
            assert all(set(check) == {"status"} for check in response.json()["checks"].values())
        else:
            assert response.status_code == status

    settings.METRICS_ACCESS = "loopback"
    refused(remote.get(path), 403)
    granted(local.get(path))
    granted(local6.get(path))

    settings.METRICS_ACCESS = "token"
    settings.METRICS_TOKEN = "s3cret-token"
    refused(local.get(path), 401)
    refused(remote.get(path, HTTP_AUTHORIZATION="Bearer wrong"), 401)
    granted(remote.get(path, HTTP_AUTHORIZATION="Bearer s3cret-token"))

    settings.METRICS_ACCESS = "staff"
    refused(local.get(path), 403)
    staff = Client(REMOTE_ADDR="203.0.113.9")
    staff.force_login(django_user_model.objects.create_user("metrics-staff", password="x", is_staff=True))
    granted(staff.get(path))
    plain = Client(REMOTE_ADDR="203.0.113.9")
    plain.force_login(django_user_model.objects.create_user("metrics-plain", password="x"))
    refused(plain.get(path), 403)

    settings.METRICS_ACCESS = "loopback,token"
    granted(remote.get(path, HTTP_AUTHORIZATION="Bearer s3cret-token"))
    granted(local.get(path))

    settings.METRICS_ACCESS = "open"
    if is_health:  # open lets anyone in, but anyone is nobody in particular: statuses only
        refused(remote.get(path), 200)
    else:
        granted(remote.get(path))

    settings.METRICS_ACCESS = "bogus"
    refused(local.get(path), 403)


# ------------------------------------------------------------------ access through the real web tier


CLOSED_PORT = _free_port()  # Kafka "down" for the guarded server: its health detail names this address


@pytest.fixture(scope="module")
def guarded_server(django_db_setup: Any) -> Iterator[WebServer]:
    """Behind one reverse proxy on the same host (every request's REMOTE_ADDR is loopback), loopback or token
    access; Kafka pointed at a closed port so the health details hold an address and a raw error."""
    server = WebServer(
        workers=1,
        extra_env={
            "NUM_PROXIES": "1",
            "METRICS_ACCESS": "loopback,token",
            "METRICS_TOKEN": "s3cret-token",
            "KAFKA_BROKERS": f"127.0.0.1:{CLOSED_PORT}",
        },
    )
    yield server
    server.stop()


def _get(server: WebServer, path: str, **headers: Any) -> requests.Response:
    return requests.get(server.url + path, headers=headers, timeout=10)


def test_loopback_mode_behind_a_proxy_judges_the_forwarded_client_address(guarded_server: WebServer) -> None:
    assert _get(guarded_server, "/metrics", **{"X-Forwarded-For": "127.0.0.1"}).status_code == 200
    assert _get(guarded_server, "/metrics", **{"X-Forwarded-For": "203.0.113.9, ::1"}).status_code == 200
    # REMOTE_ADDR is the proxy's loopback address every time: it must not let these in.
    assert _get(guarded_server, "/metrics", **{"X-Forwarded-For": "203.0.113.9"}).status_code == 401
    assert _get(guarded_server, "/metrics", **{"X-Forwarded-For": "127.0.0.1, 203.0.113.9"}).status_code == 401
    assert _get(guarded_server, "/metrics").status_code == 401  # not through the proxy: unknown client
    authorised = {"X-Forwarded-For": "203.0.113.9", "Authorization": "Bearer s3cret-token"}
    assert _get(guarded_server, "/metrics", **authorised).status_code == 200


@pytest.mark.parametrize("path", ENDPOINTS)
def test_a_non_ascii_bearer_token_is_a_clean_401(path: str, settings: Any) -> None:
    """Through Django directly: granian drops a header value that is not ASCII before Django sees it, other
    WSGI servers (gunicorn, uWSGI) hand it over decoded as latin-1."""
    settings.METRICS_ACCESS = "token"
    settings.METRICS_TOKEN = "s3cret-token"
    remote = Client(REMOTE_ADDR="203.0.113.9")
    for token in ("caf\xe9", "s3cret-token\xe9", "\u0131nvalid", "s3cret-token\u2028"):
        response = remote.get(path, HTTP_AUTHORIZATION=f"Bearer {token}")
        if path.endswith("/health"):
            assert response.status_code in (200, 503)
            assert all(set(check) == {"status"} for check in response.json()["checks"].values())
        else:
            assert response.status_code == 401, (token, response.content[:300])
            assert response.json() == {"error": "a valid bearer token is required"}


def test_health_details_only_for_authorised_callers(guarded_server: WebServer) -> None:
    anonymous = _get(guarded_server, "/metrics/publisher/health", **{"X-Forwarded-For": "203.0.113.9"})
    assert anonymous.status_code == 503
    body = anonymous.json()
    assert body["status"] == "unhealthy"
    assert body["checks"]["kafka"] == {"status": "unhealthy"}
    assert {check["status"] for check in body["checks"].values()} <= {"healthy", "degraded", "unhealthy"}
    assert all(set(check) == {"status"} for check in body["checks"].values()), body
    db = settings.DATABASES["default"]
    for secret in (str(CLOSED_PORT), "127.0.0.1", str(db["USER"]), str(db["NAME"]), "Error", "refused"):
        assert secret not in anonymous.text, secret

    for headers in ({"X-Forwarded-For": "127.0.0.1"}, {"Authorization": "Bearer s3cret-token"}):
        detailed = _get(guarded_server, "/metrics/publisher/health", **headers).json()
        assert detailed["checks"]["kafka"]["status"] == "unhealthy"
        assert f"127.0.0.1:{CLOSED_PORT}" in detailed["checks"]["kafka"]["detail"]
        assert all(check["detail"] for check in detailed["checks"].values())


def test_open_metrics_never_show_health_details(django_db_setup: Any) -> None:
    server = WebServer(workers=1, extra_env={"METRICS_ACCESS": "open", "KAFKA_BROKERS": f"127.0.0.1:{CLOSED_PORT}"})
    try:
        assert _get(server, "/metrics").status_code == 200
        health_answer = _get(server, "/metrics/publisher/health")
        assert health_answer.status_code == 503
        assert all(set(check) == {"status"} for check in health_answer.json()["checks"].values())
        assert str(CLOSED_PORT) not in health_answer.text
    finally:
        server.stop()


def test_dashboard_is_for_staff_only(client: Client, admin_client: Client) -> None:
    page = client.get("/admin/dashboard/")
    assert page.status_code == 302 and "/admin/login/" in page["Location"]
    assert client.get("/admin/dashboard/data.json").status_code == 302
    page = admin_client.get("/admin/dashboard/")
    assert page.status_code == 200
    assert b'id="publisher-dashboard"' in page.content
    assert b"publisher/dashboard.js" in page.content
    data = admin_client.get("/admin/dashboard/data.json").json()
    assert len(data["minutes"]) == stats.HISTORY_MINUTES
    assert set(data["latency_ms"]) == {"p50", "p95", "p99"}
    assert {"breaker_state", "queue_depth", "dlq_pending", "events_published"} <= set(data["summary"])


def test_reset_metrics_removes_files_of_dead_processes_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import config

    alive = tmp_path / f"counter_{config.prometheus_process_id(1)}.db"  # init: always running
    dead = tmp_path / f"histogram_{config.prometheus_process_id(2**22 + 12345)}.db"  # beyond pid_max
    other_host = tmp_path / "counter_some-other-host-4242.db"  # another container's: not ours to judge
    for path in (alive, dead, other_host):
        path.write_bytes(b"")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    out = io.StringIO()
    call_command("reset_metrics", stdout=out)
    assert alive.exists() and other_host.exists() and not dead.exists()
    assert "removed 1 stale file(s)" in out.getvalue()
    call_command("reset_metrics", "--all", stdout=out)
    assert not list(tmp_path.glob("*.db"))


def test_json_log_formatter_writes_one_line_with_extra_fields() -> None:
    from config.logging import JsonFormatter

    record = logging.LogRecord("publisher.tasks", logging.INFO, __file__, 1, "published %d", (3,), None)
    record.__dict__.update({"event": "publish_done", "topic": "user.attempts", "when": object()})
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        error = logging.LogRecord("x", logging.ERROR, __file__, 2, "failed", (), sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "published 3" and entry["level"] == "info" and entry["logger"] == "publisher.tasks"
    assert entry["event"] == "publish_done" and entry["topic"] == "user.attempts"
    assert entry["ts"].endswith("Z") and entry["pid"] == os.getpid()
    assert isinstance(entry["when"], str)
    failure = JsonFormatter().format(error)
    assert "\n" not in failure
    assert json.loads(failure)["exc_type"] == "ValueError"
