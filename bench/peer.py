"""The peer rows: the same batch and single loads against an HTTP-to-Kafka bridge on the Java Kafka client.

No ready-made bridge can be had from this machine's registries (the Strimzi Kafka Bridge and Confluent's REST
Proxy are not on Maven Central, Karapace is not on PyPI), so the peer is assembled from Apache Camel's components
that are: `camel-platform-http-main` (a Vert.x HTTP server), `camel-kafka` (the Java client, compiled record
encoding), and the route in `bench/peer/routes.yaml`. Each event becomes one record with the publisher's key and
seven headers, and the bridge answers 202 only after Kafka acknowledged every record of the request (acks=all,
idempotent, the project's compression, linger and batch size). It validates nothing, keeps no dedup marks and has
no queue: it is what moving bytes from HTTP to Kafka costs on this machine without Python, not a service that
does what ours does.

The jars are fetched once by Maven (`bench/peer/pom.xml`) into `.cache/peer/libs`; without Maven or a reachable
Maven Central the rows are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

from bench.processes import ROOT, free_port, stop_group, wait_until_serving
from bench.run_settings import Settings

POM = ROOT / "bench" / "peer" / "pom.xml"
ROUTES = ROOT / "bench" / "peer" / "routes.yaml"
LIBS = ROOT / ".cache" / "peer" / "libs"


class PeerUnavailable(Exception):
    """The bridge cannot be run here (no Java or Maven, or its jars could not be fetched)."""


def ensure_libs(log: Any = print) -> None:
    """Fetch the bridge's jars unless the last fetch completed after the pom last changed."""
    marker = LIBS / ".complete"
    if marker.exists() and marker.stat().st_mtime >= POM.stat().st_mtime:
        return
    for tool in ("java", "mvn"):
        if shutil.which(tool) is None:
            raise PeerUnavailable(f"`{tool}` is not on PATH")
    log("peer: fetching Apache Camel jars from Maven Central (bench/peer/pom.xml)")
    fetched = subprocess.run(
        ["mvn", "-B", "-q", "-f", str(POM), "dependency:copy-dependencies", "-DincludeScope=runtime",
         f"-DoutputDirectory={LIBS}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if fetched.returncode != 0:
        tail = (fetched.stdout + fetched.stderr).strip().splitlines()[-5:]
        raise PeerUnavailable("mvn could not fetch the bridge's jars: " + " | ".join(tail))
    marker.touch()


class PeerTiers:
    """bench.tiers.Tiers' face for the bridge: `start_web()` starts it; it is its own worker, so there is none."""

    has_queue = False

    def __init__(self, settings: Settings, name: str, *, topic: str, producer: dict[str, Any]) -> None:
        self.s = settings
        self.name = name
        self.port = free_port()
        self.web: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        compression = producer.get("compression_type") or "none"
        properties = {
            "camel.main.name": f"bench-peer-{name}",
            "camel.main.routesIncludePattern": f"file:{ROUTES}",
            "camel.server.enabled": "true",
            "camel.server.host": "127.0.0.1",
            "camel.server.port": str(self.port),
            "peer.topic": topic,
            "peer.brokers": settings.bootstrap,
            "peer.compression": compression,
            "peer.lingerMs": str(producer["linger_ms"]),
            "peer.batchSize": str(producer["batch_size"]),
            "peer.source": settings.source,
        }
        self.cmd = [
            "java", "-Xms128m", "-Xmx512m", "-XX:+UseG1GC",
            *(f"-D{key}={value}" for key, value in properties.items()),
            "-cp", f"{LIBS}/*", "org.apache.camel.main.Main",
        ]  # fmt: skip

    def start_web(self) -> None:
        log_file = (self.s.workdir / f"{self.name}-bridge.log").open("ab")
        self.web = subprocess.Popen(
            self.cmd, cwd=ROOT, env=os.environ.copy(), stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        wait_until_serving(
            self.web,
            self.port,
            ready=lambda answer: answer.code == 405,  # Camel's POST-only route
            timeout=90,
            what="the peer bridge",
            log_path=self.s.workdir / f"{self.name}-bridge.log",
        )

    def start_worker(self) -> None:
        """Nothing to start: the bridge publishes before it answers."""

    def stop(self) -> None:
        if self.web is not None:
            stop_group(self.web)
