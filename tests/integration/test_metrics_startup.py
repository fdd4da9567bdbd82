"""Every series the alerting rules (deploy/prometheus/alerts.yml) use exists from process start, at 0.

A series that first appears with the value 5 has no increase for rate() to see, and "events accepted but nothing
published" needs a published side to compare: so the labelled counters of known event types, rejection reasons,
topics and dead-letter reasons are created at 0 when a process starts. Checked on real processes before any
event: a Celery worker (its own metric files, including a topic that exists only in the routing table) and then
a web server sharing its multiprocess directory, scraped over HTTP like Prometheus does.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from events.limits import EVENT_TYPES
from ingestion.metrics import REJECT_REASONS
from publisher import kafka_gateway
from publisher.models import DeadLetter
from routing.models import Topic
from tests import monitoring
from tests.conftest import ServiceProcess, free_port

pytestmark = pytest.mark.django_db(transaction=True)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _configured_topics() -> list[str]:
    return [name for name in kafka_gateway.configured_topics() if name != kafka_gateway.TOPIC_DLQ]


def _expected(topics: list[str]) -> set[tuple[str, frozenset[tuple[str, str]]]]:
    """The labelled series that must be there (at 0) before any event."""
    series = {("ingestion_events_accepted_total", frozenset({("event_type", t)})) for t in EVENT_TYPES}
    series |= {("ingestion_events_rejected_total", frozenset({("reason", r)})) for r in REJECT_REASONS}
    series |= {
        ("ingestion_request_duration_seconds_count", frozenset({("endpoint", e), ("status", s)}))
        for e in ("event", "batch")
        for s in ("202", "503")
    }
    series |= {("routing_events_unrouted_total", frozenset({("event_type", t)})) for t in EVENT_TYPES}
    series |= {("publisher_events_published_total", frozenset({("topic", t)})) for t in topics}
    series |= {
        ("publisher_events_dlq_total", frozenset({("topic", t), ("reason", r)}))
        for t in topics
        for r in DeadLetter.Reason.values
    }
    return series


def _worker_series(directory: Path, pid: int) -> Samples:
    """The counters in the files of one process (files are named `<pid>` or `<host>-<pid>`)."""
    files = [str(p) for p in directory.glob("counter_*.db") if p.stem.split("_", 1)[1].rsplit("-", 1)[-1] == str(pid)]
    assert files, f"no counter file of process {pid} in {sorted(p.name for p in directory.iterdir())}"
    samples: Samples = {}
    for family in MultiProcessCollector.merge(files, accumulate=True):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def _scraped(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def _missing_or_nonzero(samples: Samples, expected: set[tuple[str, frozenset[tuple[str, str]]]]) -> list[str]:
    return sorted(
        f"{name}{dict(labels)}={samples.get((name, labels))}"
        for name, labels in expected
        if samples.get((name, labels)) != 0.0
    )


@pytest.fixture
def fresh_processes(default_routing: None, tmp_path: Path) -> Iterator[dict[str, Any]]:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    extra_topic = f"ops.extra-{uuid.uuid4().hex[:8]}"  # in the routing table only, not in the environment
    Topic.objects.create(name=extra_topic, description="added in the admin")
    env = {"PROMETHEUS_MULTIPROC_DIR": str(directory)}
    started: list[ServiceProcess] = []
    try:
        worker = ServiceProcess(
            [
                sys.executable, "-m", "celery", "-A", "config", "worker",
                "--queues", f"metrics-startup-{uuid.uuid4().hex[:8]}",  # no task of anyone else reaches it
                "--concurrency", "1", "--pool", "prefork", "--loglevel", "INFO",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
            ],
            extra_env=env,
        )  # fmt: skip
        started.append(worker)
        worker.wait_until(lambda: b" ready." in worker.log_path.read_bytes())
        port = free_port()
        web = ServiceProcess(
            [sys.executable, "-m", "config.serve", "--bind", f"127.0.0.1:{port}", "--workers", "1"], extra_env=env
        )
        started.append(web)
        url = f"http://127.0.0.1:{port}/metrics"
        web.wait_until(lambda: _get_ok(url))
        yield {"directory": directory, "worker": worker, "url": url, "extra_topic": extra_topic}
    finally:
        for process in reversed(started):
            process.stop()


def _get_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def test_worker_and_web_export_every_alerted_series_at_zero_from_start(fresh_processes: dict[str, Any]) -> None:
    directory: Path = fresh_processes["directory"]
    extra_topic: str = fresh_processes["extra_topic"]
    worker: ServiceProcess = fresh_processes["worker"]

    # The worker's main process wrote them itself: the configured topics when the app loaded, the routing table's
    # topic when it was ready.
    worker_expected = _expected([*_configured_topics(), extra_topic])
    worker_expected -= {s for s in worker_expected if s[0].startswith("ingestion_")}  # the API's, not imported
    assert not _missing_or_nonzero(_worker_series(directory, worker.proc.pid), worker_expected)

    # Scraped from a web process over the shared directory: the web's own series and the worker's, all at 0.
    response = requests.get(fresh_processes["url"], timeout=10)
    assert response.status_code == 200, response.text[:300]
    scraped = _scraped(response.text)
    assert not _missing_or_nonzero(scraped, _expected([*_configured_topics(), extra_topic]))

    # And so every series the alerting rules read is there before any event, but the failures: they are labelled
    # by the exception's class, an open set, so their series appear with the first failure.
    alerted = set().union(*(monitoring.series_names(rule["expr"]) for rule in monitoring.alert_rules()))
    alerted -= monitoring.PROMETHEUS_SERIES | {"publisher_events_failed_total"}
    assert alerted <= {name for name, _ in scraped}, sorted(alerted - {name for name, _ in scraped})
