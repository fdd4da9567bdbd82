"""Two app nodes behind a real haproxy for the tests: each node is a web server and a Celery worker with its own
Prometheus multiprocess directory (as scripts/nodes.sh starts them), sharing the suite's PostgreSQL, Redis and
Kafka; haproxy runs with the configuration scripts/nodes.sh generates."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, ServiceProcess, WebServer, WorkerProcess, free_port

METRICS_TOKEN = "two-nodes-test-token"
# What scripts/nodes.sh gives each node: the client address is the one haproxy forwards, and Prometheus scrapes
# each node directly with a token (a direct request carries no forwarded address, so `loopback` cannot admit it).
NODE_ENV = {"NUM_PROXIES": "1", "METRICS_ACCESS": "token", "METRICS_TOKEN": METRICS_TOKEN}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Node:
    name: str
    web: WebServer
    worker: WorkerProcess
    multiproc_dir: Path

    @classmethod
    def start(cls, name: str, *, tmp: Path, env: Mapping[str, str], port: int | None = None) -> Node:
        multiproc = tmp / f"prometheus-{name}"
        multiproc.mkdir(parents=True, exist_ok=True)
        node_env = NODE_ENV | dict(env) | {"PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
        worker = WorkerProcess(extra_env=node_env)
        try:
            web = WebServer(workers=2, extra_env=node_env, port=port)
        except BaseException:
            worker.stop()
            raise
        return cls(name, web, worker, multiproc)

    @property
    def port(self) -> int:
        return self.web.port

    def metrics(self) -> Samples:
        """This node's own /metrics (its web and worker processes), scraped directly as Prometheus would."""
        response = requests.get(
            f"{self.web.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10
        )
        assert response.status_code == 200, response.text[:300]
        values: Samples = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return values

    def metric(self, name: str, **labels: str) -> float:
        return total(self.metrics(), name, **labels)

    def kill(self) -> None:
        """SIGKILL every process of the node (web server and its workers, Celery worker and its pool)."""
        for service in (self.web, self.worker):
            if service.proc.poll() is None:
                os.killpg(service.proc.pid, signal.SIGKILL)
                service.proc.wait(10)

    def stop(self) -> None:
        self.web.stop()
        self.worker.stop()

    @contextmanager
    def worker_paused(self) -> Iterator[None]:
        """The node's Celery worker stopped (SIGSTOP) for the block: it takes nothing off the queue."""
        os.killpg(self.worker.proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.killpg(self.worker.proc.pid, signal.SIGCONT)


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and all(dict(sample_labels).get(k) == v for k, v in labels.items())
    )


class LoadBalancer(ServiceProcess):
    """haproxy in the foreground with the configuration of scripts/nodes.sh, in front of these nodes."""

    kind = "haproxy"

    def __init__(self, nodes: list[Node], *, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.socket_path = tmp / "haproxy.sock"
        config = subprocess.run(
            ["bash", "scripts/nodes.sh", "haproxy-config", f"127.0.0.1:{self.port}",
             *(f"{n.name}=127.0.0.1:{n.port}" for n in nodes), "--socket", str(self.socket_path)],
            cwd=ROOT, check=True, capture_output=True, text=True, timeout=30,
        ).stdout  # fmt: skip
        self.config_path = tmp / "haproxy.cfg"
        self.config_path.write_text(config)
        super().__init__(["haproxy", "-db", "-f", str(self.config_path)])
        names = {n.name for n in nodes}
        self.wait_until(lambda: self._states_or_empty() == dict.fromkeys(names, "UP"), timeout=30)

    def _states_or_empty(self) -> dict[str, str]:
        try:
            return self.server_states()
        except OSError:
            return {}

    def server_states(self) -> dict[str, str]:
        """Each server's state as haproxy sees it (UP, DOWN, ...), from its stats socket."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket_path))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {
            row["svname"]: row["status"].split()[0]
            for row in rows
            if row.get("pxname") == "nodes" and row["svname"] not in ("BACKEND", "FRONTEND")
        }


@dataclass
class Answer:
    status: int
    node: str  # which node answered (haproxy's X-Ingest-Node), "" when haproxy itself did
    body: dict[str, Any] = field(default_factory=dict)
    retry_after: str | None = None


def post(url: str, key: str, body: Any, *, path: str = "/api/v1/events/batch") -> Answer:
    response = requests.post(url + path, json=body, headers={"Authorization": f"Api-Key {key}"}, timeout=30)
    try:
        parsed = response.json()
    except ValueError:
        parsed = {}
    return Answer(
        response.status_code,
        response.headers.get("X-Ingest-Node", ""),
        parsed if isinstance(parsed, dict) else {},
        response.headers.get("Retry-After"),
    )


def wait_for(predicate: Any, *, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
