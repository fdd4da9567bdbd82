"""The project's web and worker tiers as a bench phase starts and stops them."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench import procfs
from bench.processes import ROOT, free_port, stop_group, wait_until_serving
from bench.run_settings import Settings


class Tiers:
    """The web tier (config.serve) and the worker tier (celery), as `make run` starts them, on the bench's Redis."""

    has_queue = True  # accepted events wait in Redis: the phase measures the bytes each one takes there

    def __init__(self, settings: Settings, name: str) -> None:
        self.s = settings
        self.name = name
        self.port = free_port()
        self.web: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.prometheus_dir = tempfile.mkdtemp(prefix="bench-prometheus-", dir=settings.workdir)
        self.env = (
            os.environ
            | {
                "DJANGO_SETTINGS_MODULE": "config.settings",
                "REDIS_URL": settings.redis_url,
                "CELERY_BROKER_URL": settings.redis_url,
                "PROMETHEUS_MULTIPROC_DIR": self.prometheus_dir,
                # The bench's one key sends far more than a producer's default allowance.
                "INGEST_RATE_LIMIT": "100000000/s",
                # Dedup marks of synthetic events need not outlive the run (the bench also deletes them).
                "INGEST_DEDUP_TTL": "30m",
                "PYTHONUNBUFFERED": "1",
            }
            | settings.extra_env
        )

    def _log(self, tier: str) -> Any:
        return (self.s.workdir / f"{self.name}-{tier}.log").open("ab")

    def start_web(self) -> None:
        cmd = [
            sys.executable, "-m", "config.serve", "--workers", str(self.s.web_workers),
            "--bind", f"127.0.0.1:{self.port}", "--shutdown-timeout", "5", *self.s.web_args,
        ]  # fmt: skip
        self.web = subprocess.Popen(
            cmd, cwd=ROOT, env=self.env, stdout=self._log("web"), stderr=subprocess.STDOUT, start_new_session=True
        )
        web = self.web
        wait_until_serving(
            web,
            self.port,
            ready=lambda _: len(procfs.tree(web.pid)) - 1 >= self.s.web_workers,  # every worker forked
            timeout=60,
            what="the web server",
            log_path=self.s.workdir / f"{self.name}-web.log",
        )

    def start_worker(self) -> None:
        cmd = [
            sys.executable, "-m", "celery", "-A", "config", "worker", "--queues", "publish",
            "--concurrency", str(self.s.worker_concurrency), "--without-gossip", "--without-mingle",
            "--without-heartbeat", "--hostname", f"bench-{self.s.tag}-{self.name}@%h", *self.s.worker_args,
        ]  # fmt: skip
        if self.s.worker_instances > 1:
            # One process group under a shell, so CPU, RSS and stopping take them all like one prefork tree.
            commands = [shlex.join([a.replace("@%h", f"-{n}@%h") for a in cmd]) for n in range(self.s.worker_instances)]
            cmd = ["bash", "-c", " & ".join(commands) + " & wait"]
        self.worker = subprocess.Popen(
            cmd, cwd=ROOT, env=self.env, stdout=self._log("worker"), stderr=subprocess.STDOUT, start_new_session=True
        )
        # Other pools have no child processes; the probe request then shows when the worker consumes.
        pools = {a.rpartition("=")[2] for a in self.s.worker_args}  # `--pool solo`, `--pool=solo`, `-P solo`
        prefork = not pools & {"threads", "solo", "gevent", "eventlet"}
        instances = self.s.worker_instances
        # Every worker's main process and pool processes, plus the shell when there are several workers.
        expected = instances * (1 + self.s.worker_concurrency) + (1 if instances > 1 else 0)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.worker.poll() is not None:
                raise RuntimeError(f"celery worker exited early, see {self.s.workdir}/{self.name}-worker.log")
            if not prefork or len(procfs.tree(self.worker.pid)) >= expected:
                return
            time.sleep(0.2)
        raise RuntimeError("celery worker pool not up after 60 s")

    def stop_worker(self) -> None:
        if self.worker is not None:
            stop_group(self.worker)

    def stop(self) -> None:
        self.stop_worker()
        if self.web is not None:
            stop_group(self.web)
