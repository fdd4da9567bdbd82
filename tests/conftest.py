"""Shared fixtures: the real services (started by `make services-up`), a real Celery worker process, and a
Kafka reader that returns exactly the records written after a point in time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from kafka import KafkaConsumer, TopicPartition

from tests.cluster import kafka_cluster  # noqa: F401  (a session fixture for every test module)

ROOT = Path(__file__).resolve().parent.parent


def pytest_runtest_setup(item: pytest.Item) -> None:
    from tests.fastpath_switch import skip_unless_switched_on

    skip_unless_switched_on(item)


@pytest.fixture(autouse=True)
def _fast_path_toggle(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests parametrized by tests.fastpath_switch.on_off run with their fast path switched as the case says."""
    from tests.fastpath_switch import apply_toggle

    apply_toggle(request, monkeypatch)


# The suite's tests share one publish queue that often has no worker draining it (the session's worker starts
# with the first test that asks for it, and many tests enqueue without one): the queue-delay limit would refuse
# their events. Off for the suite's own processes and in-process requests; tests/integration/test_admission.py
# sets it for the processes it starts.
NO_QUEUE_DELAY_LIMIT = {"INGEST_MAX_QUEUE_DELAY": "0"}


@pytest.fixture(autouse=True)
def _no_queue_delay_limit() -> Iterator[None]:
    from django.test import override_settings

    with override_settings(INGEST_MAX_QUEUE_DELAY=0):
        yield


@dataclass
class ConsumedRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]


class KafkaReader:
    """Remembers the end offsets of some topics, then reads only what was written after that (`isolation_level`
    `read_committed`: only what transactions committed, as a consumer that wants exactly once reads)."""

    def __init__(
        self,
        topics: list[str],
        start: dict[Any, int] | None = None,
        *,
        brokers: list[str] | None = None,
        isolation_level: str = "read_uncommitted",
    ) -> None:
        self.consumer = KafkaConsumer(
            bootstrap_servers=brokers or settings.KAFKA_BROKERS,
            enable_auto_commit=False,
            consumer_timeout_ms=500,
            isolation_level=isolation_level,
        )
        self.partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(self.consumer.partitions_for_topic(topic) or [])
        ]
        self.consumer.assign(self.partitions)
        self.start = start if start is not None else self.consumer.end_offsets(self.partitions)
        for tp, offset in self.start.items():
            self.consumer.seek(tp, offset)

    def read(self, *, expected: int, timeout: float = 20.0, settle: float = 0.5) -> list[ConsumedRecord]:
        """Read until `expected` records arrived (then `settle` more seconds to catch extras) or timeout."""
        records: list[ConsumedRecord] = []
        deadline = time.monotonic() + timeout
        settle_until: float | None = None
        while time.monotonic() < deadline:
            if settle_until is None and len(records) >= expected:
                settle_until = time.monotonic() + settle
            if settle_until is not None and time.monotonic() >= settle_until:
                break
            for tp_records in self.consumer.poll(timeout_ms=200).values():
                for r in tp_records:
                    records.append(
                        ConsumedRecord(r.topic, r.partition, r.offset, r.key, r.value, dict(r.headers or []))
                    )
        return records

    def close(self) -> None:
        self.consumer.close()


def create_topic(name: str, **configs: str) -> None:
    """A one-partition topic with these topic configs (left as it is if it exists)."""
    from kafka.errors import TopicAlreadyExistsError

    from publisher import kafka_gateway

    admin = kafka_gateway.admin_client()
    try:
        admin.create_topics(
            {name: {"num_partitions": 1, "replication_factor": 1, "configs": configs}}, wait_for_metadata=True
        )
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None) -> None:
    """TEST_DB_SUFFIX lets two suites run side by side on one PostgreSQL (each with its own test database);
    give each its own REDIS_URL database number too."""
    suffix = os.environ.get("TEST_DB_SUFFIX")
    if suffix:
        from django.db import connections

        test = connections["default"].settings_dict.setdefault("TEST", {})
        test["NAME"] = f"test_{connections['default'].settings_dict['NAME']}_{suffix}"


@pytest.fixture
def kafka_reader() -> Iterator[Any]:
    readers: list[KafkaReader] = []

    def make(*topics: str) -> KafkaReader:
        reader = KafkaReader(list(topics))
        readers.append(reader)
        return reader

    yield make
    for reader in readers:
        reader.close()


def _test_database_url() -> str:
    db = settings.DATABASES["default"]
    return f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


class ServiceProcess:
    """A tier of the service (web or worker) started as a real process on the test database, logging to a file
    under .data/, in its own process group so stop() takes its children too."""

    kind = "process"

    def __init__(self, argv: list[str], *, extra_env: dict[str, str] | None = None) -> None:
        self.log_path = ROOT / ".data" / f"test-{self.kind}-{uuid.uuid4().hex[:8]}.log"
        self.log = self.log_path.open("wb")
        env = (
            NO_QUEUE_DELAY_LIMIT
            | os.environ
            | {"DATABASE_URL": _test_database_url(), "PYTHONUNBUFFERED": "1"}
            | (extra_env or {})
        )
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_until(self, ready: Any, *, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited early:\n{self.output()[-3000:]}")
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.kind} not ready after {timeout}s:\n{self.output()[-3000:]}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


class WorkerProcess(ServiceProcess):
    kind = "worker"

    def __init__(self, *, concurrency: int = 2, extra_env: dict[str, str] | None = None) -> None:
        super().__init__(
            [
                sys.executable, "-m", "celery", "-A", "config", "worker", "--queues", "publish",
                "--concurrency", str(concurrency), "--pool", "prefork", "--loglevel", "INFO",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
                "--hostname", f"test-{uuid.uuid4().hex[:6]}@%h",
            ],
            extra_env=extra_env,
        )  # fmt: skip
        self.wait_until(lambda: b" ready." in self.log_path.read_bytes())


@pytest.fixture(scope="session")
def celery_worker(django_db_setup: Any, django_db_blocker: Any) -> Iterator[WorkerProcess]:
    """A real `celery worker` process (prefork, 2 children) on the test database, for the whole session."""
    _purge_publish_queue()
    worker = WorkerProcess()
    yield worker
    worker.stop()


def _purge_publish_queue() -> None:
    from config.celery import app

    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge("publish")


@pytest.fixture
def default_routing(transactional_db: Any) -> None:
    """The seed's topics and rules (transactional tests truncate tables, so seed them again)."""
    from routing.seed import seed_default_routing

    seed_default_routing()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class WebServer(ServiceProcess):
    """The real web tier (`python -m config.serve`: granian, several workers) on the test database."""

    kind = "web"

    def __init__(self, *, workers: int = 2, extra_env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            [
                sys.executable, "-m", "config.serve", "--bind", f"127.0.0.1:{self.port}",
                "--workers", str(workers), "--access-log", "--shutdown-timeout", "5",
            ],
            extra_env=extra_env,
        )  # fmt: skip
        self.wait_until(self._answers)

    def _answers(self) -> bool:
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(f"{self.url}/api/schema/", timeout=2)
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
        return True

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        super().stop(sig, timeout)


@pytest.fixture(scope="session")
def web_server(django_db_setup: Any, django_db_blocker: Any) -> Iterator[WebServer]:
    server = WebServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sentinel_group() -> Iterator[Any]:
    """The Sentinel group (tests/sentinel.py), started if it is not running (and then stopped at the end), its
    test database emptied; waits for a primary with a replica in sync."""
    from tests.sentinel import SentinelGroup, sentinel_running, sentinel_services

    started = not sentinel_running()
    if started:
        sentinel_services("up")
    group = SentinelGroup()
    group.wait_ready()
    group.primary_client().flushdb()
    yield group
    if started:
        sentinel_services("down")


@pytest.fixture
def api_key(transactional_db: Any) -> str:
    """A fresh producer key named like the test (the name travels as the `source` header)."""
    from rest_framework_api_key.models import APIKey

    from ingestion.auth import clear_key_cache

    clear_key_cache()
    _, key = APIKey.objects.create_key(name=f"test-{uuid.uuid4().hex[:8]}")
    return str(key)
