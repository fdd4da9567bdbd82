"""The full pipeline under load: web (`python -m config.serve`) -> Redis/Celery -> Celery worker -> Kafka,
counted in Kafka.

Per phase (batch or single) the bench starts its own web and worker tiers on the bench's Redis database, then:

1. memory per queued event: with no worker running, POST a fixed number of events and compare Redis
   `used_memory` (and the queue list's own `MEMORY USAGE`) before and after; then purge;
2. starts the worker and a Kafka watcher (bench.watch), sends one probe request and waits until it is
   visible in Kafka (the whole path works, every process is warm);
3. runs the load generator (bench.loadgen) for warm-up + duration; CPU of every process tree is sampled at the
   end of the warm-up and at the end of the run;
4. drains: waits until every accepted event is in Kafka (or --drain-timeout), reads peak RSS, stops everything
   and removes what the phase left in Redis.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import redis

from bench import events as bench_events
from bench import procfs
from bench.stats import percentiles

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


def wait_until_serving(
    proc: subprocess.Popen[bytes],
    port: int,
    *,
    ready: Callable[[urllib.error.HTTPError], bool],
    timeout: float,
    what: str,
    log_path: Path,
) -> None:
    """Until `GET /api/v1/events` on `port` gets an HTTP error answer (the POST-only route is up) that `ready`
    accepts; raises if `proc` exits first or `timeout` seconds pass."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited early, see {log_path}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/events", timeout=2)
        except urllib.error.HTTPError as exc:
            if ready(exc):
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} was not ready after {timeout:.0f} s")


@dataclass
class Settings:
    duration: float
    warmup: float
    concurrency: int
    batch_size: int
    web_workers: int
    worker_concurrency: int
    redis_url: str
    bootstrap: str
    topics: list[str]
    api_key: str
    source: str
    tag: str
    sample_every: int
    drain_timeout: float
    memory_events: int
    workdir: Path
    own_redis_db: bool = True  # the bench's Redis database is not the application's: task keys may go too
    web_args: list[str] = field(default_factory=list)  # extra `config.serve` arguments, e.g. --threads
    worker_args: list[str] = field(default_factory=list)  # extra celery worker arguments
    worker_instances: int = 1  # celery workers side by side, e.g. two `--pool solo` workers instead of prefork
    rate: float | None = None  # events/s offered (open loop); None: closed loop at `concurrency`
    watch_mode: str = "deferred"
    offsets_interval: float = 0.05
    log: Any = print
    extra_env: dict[str, str] = field(default_factory=dict)


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


class Watcher:
    def __init__(self, settings: Settings, name: str, batch_sizes: dict[int, int]) -> None:
        self.dir = settings.workdir
        self.name = name
        self.ready = self.dir / f"{name}-watch.ready"
        self.progress = self.dir / f"{name}-watch.progress"
        self.stop_file = self.dir / f"{name}-watch.stop"
        self.load_done_file = self.dir / f"{name}-watch.load-done"
        self.out = self.dir / f"{name}-watch.json"
        config = {
            "bootstrap_servers": settings.bootstrap,
            "topics": settings.topics,
            "source": settings.source,
            "tag": settings.tag,
            "sample_every": settings.sample_every,
            "batch_size": {str(k): v for k, v in batch_sizes.items()},
            "ready_file": str(self.ready),
            "progress_file": str(self.progress),
            "stop_file": str(self.stop_file),
            "load_done_file": str(self.load_done_file),
            "mode": settings.watch_mode,
            "offsets_interval": settings.offsets_interval,
        }
        config_path = self.dir / f"{name}-watch.config.json"
        config_path.write_bytes(orjson.dumps(config))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.watch", str(config_path), str(self.out)],
            cwd=ROOT,
            stdout=(self.dir / f"{name}-watch.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 60
        while not self.ready.exists():
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"kafka watcher failed to start, see {self.dir}/{name}-watch.log")
            time.sleep(0.1)

    def load_done(self) -> None:
        """From now on the watcher may spend CPU reading records."""
        self.load_done_file.touch()

    def pause(self) -> None:
        """No reading records while the load runs (deferred mode): only the cheap end-offsets poller."""
        self.load_done_file.unlink(missing_ok=True)

    def count(self, phase: int) -> int:
        """Records of `phase` read so far (deferred mode: only while reading is allowed)."""
        return self._progress(str(phase))

    def written(self) -> int:
        """Records written to the watched partitions since the start, anyone's (from end offsets; cheap)."""
        return self._progress("written")

    def _progress(self, key: str) -> int:
        try:
            return int(orjson.loads(self.progress.read_bytes()).get(key, 0))
        except (OSError, ValueError):
            return 0

    def wait_for(self, phase: int, expected: int, timeout: float, *, cap: float | None = None) -> bool:
        """Until `expected` records of `phase` were read. Gives up after `timeout` seconds without progress
        (reading a large backlog takes a while, and so does publishing it), or after `cap` seconds in all."""
        started = time.time()
        deadline = started + timeout
        last = -1
        while time.time() < deadline and (cap is None or time.time() < started + cap):
            count = self.count(phase)
            if count >= expected:
                return True
            if count > last:
                last = count
                deadline = time.time() + timeout
            if self.proc.poll() is not None:
                raise RuntimeError(f"kafka watcher died, see {self.dir}/{self.name}-watch.log")
            time.sleep(0.25)
        return False

    def finish(self) -> dict[str, Any]:
        self.stop_file.touch()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            stop_group(self.proc, 5)
        if not self.out.exists():
            raise RuntimeError(f"kafka watcher wrote no result, see {self.dir}/{self.name}-watch.log")
        result: dict[str, Any] = orjson.loads(self.out.read_bytes())
        return result


def run_loadgen(settings: Settings, name: str, config: dict[str, Any], *, wait: bool = True) -> Any:
    config_path = settings.workdir / f"{name}-loadgen.config.json"
    out_path = settings.workdir / f"{name}-loadgen.json"
    config_path.write_bytes(orjson.dumps(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.loadgen", str(config_path), str(out_path)],
        cwd=ROOT,
        stdout=(settings.workdir / f"{name}-loadgen.log").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    if not wait:
        return proc, out_path
    proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed, see {settings.workdir}/{name}-loadgen.log")
    return orjson.loads(out_path.read_bytes())


def _queue_keys() -> tuple[str, ...]:
    try:
        from publisher.queue import QUEUED_EVENTS_KEY
    except ImportError:  # pragma: no cover - renamed: the literal below is the last known name
        QUEUED_EVENTS_KEY = "publisher:queued-events"
    return ("publish", "unacked", "unacked_index", "unacked_mutex", QUEUED_EVENTS_KEY)


def _unlink_matching(client: redis.Redis, pattern: str) -> int:
    removed = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=pattern, count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            removed += client.unlink(*batch)
            batch.clear()
    if batch:
        removed += client.unlink(*batch)
    return removed


def purge(client: redis.Redis, tag: str, *, task_keys: bool = False) -> int:
    """Remove what a phase left in the bench's Redis database: the queue, unacked tasks, the queued-events
    counter, the dedup marks of this run's events, and with `task_keys` the publisher's per-task progress keys
    (only ever asked for when the bench has a database of its own). Returns the number of dedup marks removed."""
    client.delete(*_queue_keys())
    removed = _unlink_matching(client, f"ingest:dedup:attempt:bench-{tag}-*")
    if task_keys:
        _unlink_matching(client, "publisher:task-done:*")
        _unlink_matching(client, "publisher:task-runs:*")
    return removed


def _api_config(settings: Settings, tiers: Tiers, phase: str, single: bool, variants: int) -> dict[str, Any]:
    templates = bench_events.body_templates(
        tag=settings.tag,
        phase=bench_events.PHASES[phase],
        batch_size=None if single else settings.batch_size,
        variants=variants,
    )
    return {
        "host": "127.0.0.1",
        "port": tiers.port,
        "path": "/api/v1/events" if single else "/api/v1/events/batch",
        "api_key": settings.api_key,
        "templates": [t.decode("latin-1") for t in templates],
    }


def measure_queue_memory(settings: Settings, tiers: Tiers, client: redis.Redis, single: bool) -> dict[str, Any]:
    """Redis bytes per queued event, with no worker running."""
    phase = "memory-single" if single else "memory-batch"
    per_request = 1 if single else settings.batch_size
    requests = max(1, settings.memory_events // per_request)
    purge(client, settings.tag)
    before = int(client.info("memory")["used_memory"])
    keys_before = int(client.dbsize())
    config = _api_config(settings, tiers, phase, single, variants=16) | {
        "concurrency": min(8, settings.concurrency),
        "max_requests": requests,
        "stop_at": None,
    }
    result = run_loadgen(settings, phase, config)
    accepted = sum(r[4] for r in result["requests"])
    time.sleep(0.5)
    after = int(client.info("memory")["used_memory"])
    keys_after = int(client.dbsize())
    queue_bytes = int(client.memory_usage("publish", samples=0) or 0)
    tasks = int(client.llen("publish"))
    purge(client, settings.tag)
    return {
        "events": accepted,
        "tasks": tasks,
        "used_memory_delta_bytes": after - before,
        "bytes_per_event": (after - before) / accepted if accepted else None,
        "queue_list_bytes": queue_bytes,
        "queue_bytes_per_event": queue_bytes / accepted if accepted else None,
        "keys_added": keys_after - keys_before,
        "note": "used_memory is the whole Redis instance (queue + dedup marks + anything else running)",
    }


def run_phase(
    settings: Settings, *, name: str, broker_pid: int | None, redis_pid: int | None, tiers: Any = None
) -> dict[str, Any]:
    """One row: `name` is batch, single, peer-batch or peer-single. `tiers` defaults to the project's web and
    worker tiers; the peer rows pass the bridge's (bench.peer.PeerTiers). A fast-path variant of a row is named
    after its setting, `batch[none]`: the same phase, other work files."""
    kind = name.split("[")[0]
    single = kind.endswith("single")
    phase = bench_events.PHASES[kind]
    per_request = 1 if single else settings.batch_size
    log = settings.log
    client = redis.Redis.from_url(settings.redis_url)
    tiers = tiers or Tiers(settings, name)
    watcher: Watcher | None = None
    loadgen: subprocess.Popen[bytes] | None = None
    try:
        tiers.start_web()
        if tiers.has_queue:
            log(f"  web up on :{tiers.port}; measuring Redis memory per queued event (no worker)")
            memory = measure_queue_memory(settings, tiers, client, single)
        else:
            log(f"  up on :{tiers.port}")
            memory = {"note": "no queue: the bridge answers once Kafka acknowledged the records"}
        tiers.start_worker()
        probe_phase = bench_events.PHASES["probe"]
        watcher = Watcher(settings, name, {phase: per_request, probe_phase: per_request})
        # Probe: a few requests through the whole path; they also warm every process.
        probes = 2 * settings.web_workers
        probe = _api_config(settings, tiers, "probe", single, variants=1) | {
            "concurrency": 1,
            "max_requests": probes,
            "stop_at": None,
        }
        probe_result = run_loadgen(settings, f"{name}-probe", probe)
        if any(r[3] != 202 for r in probe_result["requests"]):
            raise RuntimeError(f"probe request failed: {probe_result}")
        watcher.load_done()  # the probe is read at once; the load itself is read after it ended
        if not watcher.wait_for(probe_phase, probes * per_request, timeout=60):
            raise RuntimeError("the probe request did not reach Kafka within 60 s (see the worker log)")
        watcher.pause()
        log(f"  probe reached Kafka; load: concurrency {settings.concurrency}, {settings.warmup:.0f}+"
            f"{settings.duration:.0f} s")  # fmt: skip

        meters = {"web": procfs.TreeMeter(tiers.web.pid)}
        if tiers.worker is not None:
            meters["worker"] = procfs.TreeMeter(tiers.worker.pid)
        if broker_pid:
            meters["kafka_broker"] = procfs.TreeMeter(broker_pid)
        if redis_pid:
            meters["redis"] = procfs.TreeMeter(redis_pid)
        meters["kafka_watcher"] = procfs.TreeMeter(watcher.proc.pid)

        start = time.time() + 1.0
        warm_end = start + settings.warmup
        end = warm_end + settings.duration
        config = _api_config(settings, tiers, kind, single, variants=64 if single else 16) | {
            "concurrency": settings.concurrency,
            "start_at": start,
            "stop_at": end,
            "max_requests": None,
            "rate": settings.rate / per_request if settings.rate else None,
        }
        loadgen, loadgen_out = run_loadgen(settings, name, config, wait=False)
        meters["loadgen"] = procfs.TreeMeter(loadgen.pid)
        time.sleep(max(0.0, warm_end - time.time()))
        for meter in meters.values():
            meter.start()
        while time.time() < end:
            time.sleep(min(1.0, max(0.0, end - time.time())))
            for meter in meters.values():
                meter.sample()
        cpu = {name_: meter.stop() for name_, meter in meters.items()}
        queue_at_end = int(client.get(_queue_keys()[-1]) or 0)
        loadgen.wait(60)
        if loadgen.returncode != 0:
            raise RuntimeError(f"load generator failed, see {settings.workdir}/{name}-loadgen.log")
        load = orjson.loads(loadgen_out.read_bytes())
        accepted_total = sum(r[4] for r in load["requests"])
        watcher.load_done()
        log(f"  load done; draining {accepted_total:,} accepted events into Kafka (queue {queue_at_end:,})")
        drain_start = time.time()
        drained = watcher.wait_for(
            phase, accepted_total, timeout=settings.drain_timeout, cap=settings.drain_timeout + 10 * settings.duration
        )
        drain_seconds = time.time() - drain_start
        rss = {tier: meters[tier].peak_rss_mib() for tier in ("web", "worker") if tier in meters}
        seen = watcher.finish()
        watcher = None
        tiers.stop()
        leftover_marks = purge(client, settings.tag, task_keys=settings.own_redis_db)
        return analyse(
            settings,
            name=name,
            phase=phase,
            per_request=per_request,
            load=load,
            seen=seen,
            cpu=cpu,
            rss=rss,
            memory=memory,
            warm_end=warm_end,
            end=end,
            drained=drained,
            drain_seconds=drain_seconds,
            queue_at_end=queue_at_end,
            removed_dedup_marks=leftover_marks,
        )
    finally:
        if loadgen is not None and loadgen.poll() is None:
            stop_group(loadgen, 5)
        if watcher is not None:
            stop_group(watcher.proc, 5)
        tiers.stop()
        purge(client, settings.tag, task_keys=settings.own_redis_db)


def analyse(
    settings: Settings,
    *,
    name: str,
    phase: int,
    per_request: int,
    load: dict[str, Any],
    seen: dict[str, Any],
    cpu: dict[str, float],
    rss: dict[str, tuple[float, float]],
    memory: dict[str, Any],
    warm_end: float,
    end: float,
    drained: bool,
    drain_seconds: float,
    queue_at_end: int,
    removed_dedup_marks: int,
) -> dict[str, Any]:
    duration = end - warm_end
    requests = load["requests"]  # [n, t_send, t_done, status, accepted]
    in_window = [r for r in requests if warm_end <= r[2] < end]
    statuses: dict[str, int] = {}
    for r in requests:
        statuses[str(r[3])] = statuses.get(str(r[3]), 0) + 1
    events_accepted = sum(r[4] for r in in_window)
    http_latencies = [r[2] - r[1] for r in requests if warm_end <= r[1] < end and r[3] == 202]
    send_time = {r[0]: r[1] for r in requests}

    buckets = seen["buckets"].get(str(phase), {})
    first, last = int(warm_end * 10) + 1, int(end * 10)  # whole 100 ms buckets inside the window
    records_in_window = sum(n for b, n in buckets.items() if first <= int(b) < last)
    records_per_s = records_in_window / ((last - first) / 10) if last > first else 0.0

    e2e, produce = [], []
    for s_phase, request, _index, t_seen, ts_ms in seen["samples"]:
        t0 = send_time.get(request)
        if s_phase != phase or t0 is None or not warm_end <= t0 < end:
            continue
        e2e.append(t_seen - t0)
        produce.append(ts_ms / 1000 - t0)

    # Completeness: every event of a 202 request (accepted, not duplicate) seen once in Kafka?
    marks = bytes.fromhex(seen["seen_marks"].get(str(phase), ""))
    missing = duplicated = 0
    for r in requests:
        if r[3] != 202:
            continue
        base = r[0] * per_request
        for i in range(r[4]):
            slot = base + i
            count = marks[slot] if slot < len(marks) else 0
            missing += count == 0
            duplicated += count > 1
    loadgen_cpu = cpu.get("loadgen", 0.0)
    return {
        "phase": name,
        "events_per_request": per_request,
        "concurrency": settings.concurrency,
        "window_seconds": duration,
        "requests_in_window": len(in_window),
        "http_statuses": statuses,
        "http_errors": load["errors"],
        "new_connections": load["new_connections"],
        "offered_events_per_s": settings.rate,
        "late_requests": load.get("late_requests", 0),
        "watch_mode": seen["mode"],
        "events_per_s": events_accepted / duration,
        "records_per_s": records_per_s,
        "http_latency_ms": percentiles(http_latencies, scale=1000),
        "e2e_latency_ms": percentiles(e2e, scale=1000),
        "post_to_produce_latency_ms": percentiles(produce, scale=1000),
        "e2e_samples": len(e2e),
        "cpu_seconds": cpu,
        "cpu_cores": {k: v / duration for k, v in cpu.items()},
        "web_cpu_us_per_event": cpu.get("web", 0) / events_accepted * 1e6 if events_accepted else None,
        "worker_cpu_us_per_record": (
            cpu["worker"] / records_in_window * 1e6 if "worker" in cpu and records_in_window else None
        ),
        "loadgen_cpu_share": loadgen_cpu / duration,
        "peak_rss_mib": {k: {"sum": v[0], "largest_process": v[1]} for k, v in rss.items()},
        "queue_memory": memory,
        "queued_events_at_end": queue_at_end,
        "drained": drained,
        "drain_seconds": drain_seconds,
        "accepted_events_total": sum(r[4] for r in requests),
        "missing_in_kafka": missing,
        "duplicated_in_kafka": duplicated,
        "foreign_records_ignored": seen["foreign_records"],
        "watcher_cpu_seconds": seen["cpu_seconds"],
        "removed_dedup_marks": removed_dedup_marks,
    }


def bench_redis_url(configured: str) -> str:
    """The bench's own Redis database (7) on the configured server, so runs never touch the application's data."""
    parts = urlsplit(configured)
    return urlunsplit((parts.scheme, parts.netloc, "/7", parts.query, parts.fragment))


def recorded_producer_config(config: dict[str, Any]) -> dict[str, Any]:
    """Producer settings as the results record them: no secrets, objects (the partitioner) by class name."""
    plain = (str, int, float, bool, type(None), list, tuple)
    return {
        key: value if isinstance(value, plain) else type(value).__name__
        for key, value in config.items()
        if "password" not in key
    }


def new_tag() -> str:
    return uuid.uuid4().hex[:8]
