"""A 3-node Kafka cluster for the tests that need one (started by scripts/services.sh on its own ports and data,
beside the shared single broker): the session fixture `kafka_cluster` (tests/conftest.py imports it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient

ROOT = Path(__file__).resolve().parents[1]
NODES = 3
PORT = 19092  # nodes on 19092-19094, their controllers on 19192-19194
CLUSTER_ENV = {
    "KAFKA_NODES": str(NODES),
    "KAFKA_PORT": str(PORT),
    "KAFKA_CONTROLLER_PORT": str(PORT + 100),
    "KAFKA_DATA_DIR": str(ROOT / ".data" / "cluster-test"),
}
BOOTSTRAP = ",".join(f"127.0.0.1:{PORT + n}" for n in range(NODES))


@dataclass
class Cluster:
    bootstrap: str
    data_dir: Path

    def services(self, *args: str) -> None:
        result = subprocess.run(
            ["bash", "scripts/services.sh", *args, "kafka"],
            cwd=ROOT, env=os.environ | CLUSTER_ENV, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]

    def pid(self, node: int) -> int:
        return int((self.data_dir / f"node-{node}" / "kafka.pid").read_text().split()[0])

    def ensure_topics(self, *args: str) -> subprocess.CompletedProcess[str]:
        from tests.conftest import _test_database_url  # late: conftest imports this module

        env = os.environ | {"KAFKA_BROKERS": self.bootstrap, "DATABASE_URL": _test_database_url()}
        return subprocess.run(
            [sys.executable, "manage.py", "ensure_topics", *args],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    def describe(self, topic: str) -> dict[str, Any]:
        """The topic's metadata, asked of whichever broker answers (one may be dead)."""
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
        try:
            return dict(admin.describe_topics([topic])[0])
        finally:
            admin.close()

    def leaders(self, topic: str) -> dict[int, int]:
        """Each partition's leader broker id (-1 while it has none)."""
        return {p["partition_index"]: p["leader_id"] for p in self.describe(topic)["partitions"]}


@pytest.fixture(scope="session")
def kafka_cluster(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Cluster]:
    """Three nodes on fresh storage for the session, with the configured topics (ensure_topics: RF 3, min ISR 2)."""
    cluster = Cluster(BOOTSTRAP, Path(CLUSTER_ENV["KAFKA_DATA_DIR"]))
    cluster.services("down")  # one an interrupted run left behind
    shutil.rmtree(cluster.data_dir, ignore_errors=True)
    cluster.services("up")
    try:
        created = cluster.ensure_topics()
        assert created.returncode == 0, created.stderr
        yield cluster
    finally:
        cluster.services("down")
        shutil.rmtree(cluster.data_dir, ignore_errors=True)
