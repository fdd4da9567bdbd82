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

import subprocess
import time
from typing import Any

import orjson
import redis

from bench import events as bench_events
from bench import procfs
from bench.load import api_config, run_loadgen
from bench.processes import stop_group
from bench.redis_state import purge, queue_keys
from bench.rows import analyse
from bench.run_settings import Settings
from bench.tiers import Tiers
from bench.watcher import Watcher


def measure_queue_memory(settings: Settings, tiers: Tiers, client: redis.Redis, single: bool) -> dict[str, Any]:
    """Redis bytes per queued event, with no worker running."""
    phase = "memory-single" if single else "memory-batch"
    per_request = 1 if single else settings.batch_size
    requests = max(1, settings.memory_events // per_request)
    purge(client, settings.tag)
    before = int(client.info("memory")["used_memory"])
    keys_before = int(client.dbsize())
    config = api_config(settings, tiers, phase, single, variants=16) | {
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
    settings: Settings,
    *,
    name: str,
    broker_pid: int | list[int] | None,
    redis_pid: int | None,
    tiers: Any = None,
) -> dict[str, Any]:
    """One row: `name` is batch, single, peer-batch or peer-single. `tiers` defaults to the project's web and
    worker tiers; the peer rows pass the bridge's (bench.peer.PeerTiers). A variant of a row is named after what
    differs, `batch[none]`, `single[cluster]`, a replica-wait variant `batch{replicas=1}`: the same phase, other
    work files. `broker_pid`: the broker's, or every node's of a cluster (their CPU is summed)."""
    kind = name.split("[")[0].split("{")[0]
    single = kind.endswith("single")
    phase = bench_events.PHASES[kind]
    per_request = 1 if single else settings.batch_size
    client = redis.Redis.from_url(settings.redis_url)
    tiers = tiers or Tiers(settings, name)
    watcher: Watcher | None = None
    loadgen: subprocess.Popen[bytes] | None = None
    try:
        tiers.start_web()
        memory = _queue_memory(settings, tiers, client, single)
        tiers.start_worker()
        probe_phase = bench_events.PHASES["probe"]
        watcher = Watcher(settings, name, {phase: per_request, probe_phase: per_request})
        _probe(settings, tiers, watcher, name=name, single=single, per_request=per_request)
        meters = _meters(tiers, watcher, broker_pid=broker_pid, redis_pid=redis_pid)
        # Base memory: each process idle after start-up and the probe's few requests, before the load.
        base_rss = {tier: meters[tier].rss_mib_by_process() for tier in ("web", "worker") if tier in meters}

        start = time.time() + 1.0
        warm_end = start + settings.warmup
        end = warm_end + settings.duration
        config = api_config(settings, tiers, kind, single, variants=64 if single else 16) | {
            "concurrency": settings.concurrency,
            "start_at": start,
            "stop_at": end,
            "max_requests": None,
            "rate": settings.rate / per_request if settings.rate else None,
        }
        loadgen, loadgen_out = run_loadgen(settings, name, config, wait=False)
        meters["loadgen"] = procfs.TreeMeter(loadgen.pid)
        cpu = _cpu_over_window(meters, warm_end, end)
        queue_at_end = int(client.get(queue_keys()[-1]) or 0)
        load = _load_result(settings, name, loadgen, loadgen_out)
        accepted_total = sum(r[4] for r in load["requests"])
        watcher.load_done()
        drained, drain_seconds = _drain(settings, watcher, phase, accepted_total, queue_at_end)
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
            base_rss=base_rss,
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


def _queue_memory(settings: Settings, tiers: Any, client: redis.Redis, single: bool) -> dict[str, Any]:
    """Step 1: Redis bytes per queued event, where the tiers queue events (the peer bridge does not)."""
    if tiers.has_queue:
        settings.log(f"  web up on :{tiers.port}; measuring Redis memory per queued event (no worker)")
        return measure_queue_memory(settings, tiers, client, single)
    settings.log(f"  up on :{tiers.port}")
    return {"note": "no queue: the bridge answers once Kafka acknowledged the records"}


def _probe(settings: Settings, tiers: Any, watcher: Watcher, *, name: str, single: bool, per_request: int) -> None:
    """Step 2: a few requests through the whole path, until Kafka has them; they also warm every process."""
    probe_phase = bench_events.PHASES["probe"]
    probes = 2 * settings.web_workers
    probe = api_config(settings, tiers, "probe", single, variants=1) | {
        "concurrency": 1,
        "max_requests": probes,
        "stop_at": None,
    }
    # The worker has just started on what the memory step queued: until it catches up the admission may refuse
    # (503, INGEST_MAX_QUEUE_DELAY). A probe sent again is answered `duplicate` for what was already accepted.
    deadline = time.monotonic() + 60
    while True:
        probe_result = run_loadgen(settings, f"{name}-probe", probe)
        statuses = {r[3] for r in probe_result["requests"]}
        if statuses == {202}:
            break
        if statuses - {202, 503} or time.monotonic() > deadline:
            raise RuntimeError(f"probe request failed: {probe_result}")
        time.sleep(1.0)
    watcher.load_done()  # the probe is read at once; the load itself is read after it ended
    if not watcher.wait_for(probe_phase, probes * per_request, timeout=60):
        raise RuntimeError("the probe request did not reach Kafka within 60 s (see the worker log)")
    watcher.pause()
    settings.log(f"  probe reached Kafka; load: concurrency {settings.concurrency}, {settings.warmup:.0f}+"
        f"{settings.duration:.0f} s")  # fmt: skip


def _meters(
    tiers: Any, watcher: Watcher, *, broker_pid: int | list[int] | None, redis_pid: int | None
) -> dict[str, procfs.TreeMeter]:
    """CPU and RSS meters of every process tree the row measures (the load generator's is added once it runs)."""
    meters = {"web": procfs.TreeMeter(tiers.web.pid)}
    if tiers.worker is not None:
        meters["worker"] = procfs.TreeMeter(tiers.worker.pid)
    brokers = broker_pid if isinstance(broker_pid, list) else [broker_pid] if broker_pid else []
    if brokers:
        meters["kafka_broker"] = procfs.TreeMeter(*brokers)
    if redis_pid:
        meters["redis"] = procfs.TreeMeter(redis_pid)
    meters["kafka_watcher"] = procfs.TreeMeter(watcher.proc.pid)
    return meters


def _cpu_over_window(meters: dict[str, procfs.TreeMeter], warm_end: float, end: float) -> dict[str, float]:
    """Step 3: CPU seconds of each tree from the end of the warm-up to the end of the run."""
    time.sleep(max(0.0, warm_end - time.time()))
    for meter in meters.values():
        meter.start()
    while time.time() < end:
        time.sleep(min(1.0, max(0.0, end - time.time())))
        for meter in meters.values():
            meter.sample()
    return {name_: meter.stop() for name_, meter in meters.items()}


def _load_result(settings: Settings, name: str, loadgen: subprocess.Popen[bytes], loadgen_out: Any) -> Any:
    """The load generator's output, once it has stopped."""
    loadgen.wait(60)
    if loadgen.returncode != 0:
        raise RuntimeError(f"load generator failed, see {settings.workdir}/{name}-loadgen.log")
    return orjson.loads(loadgen_out.read_bytes())


def _drain(
    settings: Settings, watcher: Watcher, phase: int, accepted_total: int, queue_at_end: int
) -> tuple[bool, float]:
    """Step 4: until every accepted event is in Kafka (or the drain timeout): (drained, seconds it took)."""
    settings.log(f"  load done; draining {accepted_total:,} accepted events into Kafka (queue {queue_at_end:,})")
    drain_start = time.time()
    drained = watcher.wait_for(
        phase, accepted_total, timeout=settings.drain_timeout, cap=settings.drain_timeout + 10 * settings.duration
    )
    return drained, time.time() - drain_start
