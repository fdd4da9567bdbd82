"""The 3-broker Kafka cluster of the `[cluster]` rows (`--kafka-cluster`): started with scripts/services.sh
(KAFKA_NODES=3) on its own ports and data dir beside the single broker, its topics created by `manage.py
ensure_topics` (replication factor 3, min.insync.replicas 2). A cluster already running there is used and left
running; one the bench started is stopped at the end."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.processes import ROOT

NODES = 3


@dataclass
class Cluster:
    bootstrap: str
    pids: list[int]
    started_here: bool
    topics: str  # what ensure_topics said about replication

    def describe(self) -> dict[str, Any]:
        return {"nodes": NODES, "bootstrap": self.bootstrap, "started_by_bench": self.started_here,
                "topics": self.topics}  # fmt: skip


def services_env(port: int, data_dir: Path) -> dict[str, str]:
    return os.environ | {
        "KAFKA_NODES": str(NODES),
        "KAFKA_PORT": str(port),
        "KAFKA_CONTROLLER_PORT": str(port + 100),
        "KAFKA_DATA_DIR": str(data_dir),
    }


def _services(env: dict[str, str], command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "scripts/services.sh", command, "kafka"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def start(*, port: int, data_dir: Path, log: Any) -> Cluster:
    env = services_env(port, data_dir)
    running = _services(env, "status").returncode == 0
    if not running:
        log(f"kafka cluster: starting {NODES} nodes on 127.0.0.1:{port}-{port + NODES - 1} (data in {data_dir})")
        up = _services(env, "up")
        if up.returncode != 0:
            raise RuntimeError(f"the Kafka cluster did not start:\n{up.stderr[-3000:]}")
    bootstrap = _services(env, "brokers").stdout.strip()
    topics = subprocess.run(
        [sys.executable, "manage.py", "ensure_topics"], cwd=ROOT, env=os.environ | {"KAFKA_BROKERS": bootstrap},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if topics.returncode != 0:
        if not running:
            _services(env, "down")
        raise RuntimeError(f"ensure_topics on the cluster failed:\n{topics.stderr[-3000:]}")
    summary = topics.stdout.splitlines()[0] if topics.stdout else ""
    log(f"kafka cluster: {bootstrap}; {summary}")
    pids = [int((data_dir / f"node-{n}" / "kafka.pid").read_text().split()[0]) for n in range(1, NODES + 1)]
    return Cluster(bootstrap=bootstrap, pids=pids, started_here=not running, topics=summary)


def stop(cluster: Cluster, *, port: int, data_dir: Path, log: Any) -> None:
    if cluster.started_here:
        log("kafka cluster: stopping the nodes the bench started")
        _services(services_env(port, data_dir), "down")
