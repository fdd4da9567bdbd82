"""`python -m bench.profile` (`make profile`): where the CPU goes per event, in the real processes.

Starts the web and worker tiers as `python -m bench` does, runs a short load (batches by default, `--single`
for one event per request), and samples one web worker process and one Celery pool process with py-spy
(`py-spy record --nonblocking --gil`: only the thread holding the GIL, i.e. running Python — py-spy's own idle
detection counted the web's threads blocked in `Condition.wait` as busy, 4,670 samples for 4.9 CPU s at 250 Hz).
Writes under bench/results/:

    profile-<ts>-<load>-web.svg / -worker.svg   flame graphs (self-contained SVG; the project's code in blue)
    profile-<ts>-<load>-web.folded / ...         folded stacks (speedscope.app, flamegraph.pl, inferno read them)
    profile-<ts>-<load>.txt                      self and inclusive time per function, in us of CPU per event

Without py-spy (or when it cannot attach: ptrace not permitted), it falls back to cProfile of the same code
path in this process (`--mode cprofile`): parse + validate + accept (dedup and enqueue to Redis), then the
publish task's body against the real Kafka, writing profile-<ts>-cprofile.txt.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import django
import orjson

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def find_py_spy() -> str | None:
    for candidate in (shutil.which("py-spy"), str(Path(sys.executable).parent / "py-spy")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def profile_processes(args: argparse.Namespace, py_spy: str, stamp: str) -> list[Path]:
    from django.conf import settings
    from rest_framework_api_key.models import APIKey

    from bench import events as bench_events
    from bench import flame, procfs
    from bench.load import api_config, run_loadgen
    from bench.redis_state import bench_redis_url, purge
    from bench.run_settings import Settings, new_tag
    from bench.tiers import Tiers
    from bench.watcher import Watcher

    load = "single" if args.single else "batch"
    per_request = 1 if args.single else args.batch_size
    workdir = ROOT / ".data" / "bench" / f"profile-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    source = f"bench-profile-{stamp}"
    key_obj, api_key = APIKey.objects.create_key(name=source)
    redis_url = args.redis_url or bench_redis_url(settings.REDIS_URL)
    s = Settings(
        duration=args.duration,
        warmup=args.warmup,
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        web_workers=2,
        worker_concurrency=2,
        redis_url=redis_url,
        bootstrap=",".join(settings.KAFKA_BROKERS),
        topics=[settings.KAFKA_TOPIC_ATTEMPTS],
        api_key=api_key,
        source=source,
        tag=new_tag(),
        sample_every=1000,
        drain_timeout=0,
        memory_events=0,
        workdir=workdir,
        log=_log,
    )
    import redis

    client = redis.Redis.from_url(redis_url)
    tiers = Tiers(s, f"profile-{load}")
    watcher = None
    loadgen = None
    outputs: list[Path] = []
    phase = bench_events.PHASES["profile"]
    try:
        tiers.start_web()
        tiers.start_worker()
        watcher = Watcher(s, f"profile-{load}", {phase: per_request})
        config = api_config(s, tiers, "profile", args.single, variants=16) | {
            "concurrency": args.concurrency,
            "start_at": time.time() + 0.5,
            "stop_at": time.time() + 0.5 + args.warmup + args.duration + 2,
            "max_requests": None,
        }
        loadgen, loadgen_out = run_loadgen(s, f"profile-{load}", config, wait=False)
        time.sleep(0.5 + args.warmup)
        assert tiers.web is not None and tiers.worker is not None
        web_pid = sorted(p.pid for p in procfs.tree(tiers.web.pid) if p.pid != tiers.web.pid)[0]
        worker_pid = sorted(p.pid for p in procfs.tree(tiers.worker.pid) if p.pid != tiers.worker.pid)[0]
        targets = {"web": web_pid, "worker": worker_pid}
        spies = {}
        folded = {}
        # CPU profile: only the thread holding the GIL (py-spy counts threads blocked in Condition.wait as busy).
        mode = ["--idle"] if args.idle else ["--gil"]
        for name, pid in targets.items():
            folded[name] = RESULTS / f"profile-{stamp}-{load}-{name}.folded"
            spies[name] = subprocess.Popen(
                [py_spy, "record", "--pid", str(pid), "--duration", str(int(args.duration)), "--rate", str(args.rate),
                 "--nonblocking", "--format", "raw", "--output", str(folded[name]), *mode],
                stdout=(workdir / f"py-spy-{name}.log").open("ab"), stderr=subprocess.STDOUT,
            )  # fmt: skip
        cpu0 = procfs.cpu_seconds(list(targets.values()))
        t0 = time.time()
        count0 = watcher.written()
        for spy in spies.values():
            spy.wait(args.duration + 60)
        t1 = time.time()
        cpu1 = procfs.cpu_seconds(list(targets.values()))
        count1 = watcher.written()
        loadgen.wait(60)
        requests = orjson.loads(loadgen_out.read_bytes())["requests"]
        accepted = sum(r[4] for r in requests if t0 <= r[2] < t1)
        published = count1 - count0
        report = [
            f"bench.profile {stamp}: {load} load ({per_request} events/request, concurrency {args.concurrency}), "
            f"py-spy {args.rate} Hz for {args.duration:.0f} s on one web worker (pid {web_pid}) and one "
            f"Celery pool process (pid {worker_pid}).",
            f"In that window: {accepted} events accepted over HTTP ({accepted / (t1 - t0):,.0f}/s), "
            f"{published} records written to {settings.KAFKA_TOPIC_ATTEMPTS} ({published / (t1 - t0):,.0f}/s; "
            "from end offsets, so anyone else's records on that topic count too).",
            "Per-event figures assume the load was spread evenly over the 2 web workers and the 2 pool processes.",
            "",
        ]
        handled = {"web": accepted / 2, "worker": published / 2}
        for name, path in folded.items():
            if spies[name].returncode != 0 or not path.exists():
                report.append(f"{name}: py-spy failed, see {workdir}/py-spy-{name}.log\n")
                continue
            stacks = flame.read_folded(path)
            samples = sum(c for _, c in stacks)
            cpu = cpu1.get(targets[name], 0) - cpu0.get(targets[name], 0)
            # With --idle the samples cover wall time (waiting included), otherwise CPU time.
            basis = (t1 - t0) if args.idle else cpu
            us_per_sample = basis / samples / handled[name] * 1e6 if samples and handled[name] else None
            per_event = f"{cpu / handled[name] * 1e6:,.1f} us CPU/event" if handled[name] else "no events"
            title = f"{name} (pid {targets[name]}): {cpu:.2f} CPU s, {per_event}"
            if args.idle:
                title += " - wall-clock profile (--idle): us below are wall time per event, waiting included"
            svg_path = path.with_suffix(".svg")
            svg_path.write_text(flame.svg(flame.build_tree(stacks), title))
            report.append(flame.summary(stacks, title=title, us_per_sample=us_per_sample))
            outputs += [svg_path, path]
        if not outputs:
            raise RuntimeError(f"py-spy could not sample either process: {' '.join(report[-2:])}")
        txt = RESULTS / f"profile-{stamp}-{load}.txt"
        txt.write_text("\n".join(report))
        outputs.append(txt)
        return outputs
    finally:
        if loadgen is not None and loadgen.poll() is None:
            loadgen.terminate()
            loadgen.wait(10)
        if watcher is not None:
            watcher.finish()
        tiers.stop()
        purge(client, s.tag, task_keys=redis_url != settings.REDIS_URL)
        APIKey.objects.filter(pk=key_obj.pk).update(revoked=True)


def profile_in_process(args: argparse.Namespace, stamp: str) -> list[Path]:
    """cProfile of validate + accept (Redis) + publish (Kafka) in this process, no HTTP and no Celery worker."""
    import redis
    from django.conf import settings

    from bench import events as bench_events
    from bench.redis_state import purge
    from bench.run_settings import new_tag
    from events.schema import parse_json_body, validate_batch
    from ingestion import services
    from publisher import publishing

    tag = new_tag()
    templates = bench_events.body_templates(
        tag=tag, phase=bench_events.PHASES["profile"], batch_size=args.batch_size, variants=16
    )
    batches = max(1, int(args.events) // args.batch_size)
    bodies = [bench_events.render(templates[n % len(templates)], n) for n in range(batches)]
    client = redis.Redis.from_url(settings.REDIS_URL)
    accepted_events: list[list[dict[str, Any]]] = []

    def ingest() -> None:
        for body in bodies:
            checked = validate_batch(parse_json_body(body), max_batch=settings.INGEST_MAX_BATCH)
            services.accept_events(events=checked.valid, source="bench-profile")
            accepted_events.append([ev.data for _, ev in checked.valid])

    def publish() -> None:
        for events in accepted_events:
            publishing.publish_events(events=events, source="bench-profile", accepted_at=time.time())

    publishing.publish_events(events=[], source="bench-profile", accepted_at=time.time())  # warm imports
    outputs = []
    report = io.StringIO()
    try:
        for name, fn in (("ingest (parse, validate, dedup, enqueue)", ingest), ("publish (route, send, ack)", publish)):
            profiler = cProfile.Profile()
            start = time.perf_counter()
            profiler.enable()
            fn()
            profiler.disable()
            elapsed = time.perf_counter() - start
            events = batches * args.batch_size
            report.write(f"== {name}: {events} events in {elapsed:.2f} s = {elapsed / events * 1e6:.1f} us/event ==\n")
            stats = pstats.Stats(profiler, stream=report)
            stats.sort_stats("tottime").print_stats(30)
            stats.sort_stats("cumulative").print_stats(40)
    finally:
        purge(client, tag)
    txt = RESULTS / f"profile-{stamp}-cprofile.txt"
    txt.write_text(report.getvalue())
    outputs.append(txt)
    return outputs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("auto", "py-spy", "cprofile"), default="auto")
    parser.add_argument("--single", action="store_true", help="one event per request instead of batches")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds sampled (default 15)")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second (default 250)")
    parser.add_argument(
        "--idle", action="store_true", help="also sample waiting threads (wall-clock profile: where requests wait)"
    )
    parser.add_argument("--events", type=int, default=20_000, help="cprofile mode: events to push through")
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL"))
    args = parser.parse_args(argv)

    if args.mode == "cprofile":
        from bench.redis_state import bench_redis_url

        # The in-process run enqueues through this process's settings: point them at the bench's database.
        os.environ["REDIS_URL"] = args.redis_url or bench_redis_url(
            os.environ.get("REDIS_URL", "redis://127.0.0.1:6380/0")
        )
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    py_spy = find_py_spy()
    if args.mode == "py-spy" and py_spy is None:
        raise SystemExit("py-spy not found: add it to the dev dependencies, or use --mode cprofile")
    outputs: list[Path] = []
    if args.mode != "cprofile" and py_spy is not None:
        try:
            outputs = profile_processes(args, py_spy, stamp)
        except RuntimeError as exc:
            if args.mode == "py-spy":
                raise
            _log(f"py-spy profiling failed ({exc}); falling back to cProfile in this process")
    if not outputs:
        if args.mode == "auto":
            _log("profiling in this process with cProfile (REDIS_URL database 7)")
            os.execv(
                sys.executable, [sys.executable, "-m", "bench.profile", *(argv or sys.argv[1:]), "--mode", "cprofile"]
            )
        outputs = profile_in_process(args, stamp)
    for path in outputs:
        print(path)


if __name__ == "__main__":
    main()
