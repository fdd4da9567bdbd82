"""`python -m bench` (`make bench`): the broker's limit, the client's limit and the full pipeline, in one run.

    python -m bench [--duration 30] [--warmup 5] [--concurrency 32]
                    [--only broker,client,batch,single,peer-batch,peer-single]
                    [--batch-size 100] [--single-concurrency N] [--redis-url URL] [--kafka-cluster] ...

Needs the services up, migrated, and the topics created (`make bench` sees to that). Prints one table and
writes everything measured to bench/results/<timestamp>.json. See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import django
import orjson

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PERF_TOPIC = "bench.perf"
ALL = ("broker", "client", "batch", "single", "peer-batch", "peer-single")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per row (default 30)")
    parser.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds before each (default 5)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent HTTP requests (default 32)")
    parser.add_argument(
        "--single-concurrency", type=int, default=None, help="concurrency for single events (default: --concurrency)"
    )
    parser.add_argument(
        "--rate", type=float, default=None, help="batch: offer this many events/s (open loop) instead of closed loop"
    )
    parser.add_argument("--single-rate", type=float, default=None, help="single: events/s offered (open loop)")
    parser.add_argument(
        "--watch",
        choices=("deferred", "live"),
        default="deferred",
        help="read Kafka records after the load (default; visibility from end-offset polls) or while it runs",
    )
    parser.add_argument("--offsets-interval", type=float, default=0.05, help="end-offset poll interval, seconds")
    parser.add_argument("--only", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}")
    parser.add_argument("--batch-size", type=int, default=100, help="events per batch request (default 100)")
    parser.add_argument(
        "--gzip",
        action="store_true",
        help="send every body gzip-compressed (Content-Encoding: gzip); the load generator compresses each request",
    )
    parser.add_argument(
        "--fast-paths",
        default=None,
        help="INGEST_FAST_PATHS of the web and worker processes: all, none, a comma list of names, or -NAME (all "
        "but NAME); default: as this process's environment says",
    )
    parser.add_argument(
        "--fast-paths-matrix",
        action="store_true",
        help="run the batch and single rows once per setting: all, none, and each fast path off alone (-NAME)",
    )
    parser.add_argument(
        "--redis-min-replicas",
        default=None,
        help="INGEST_REDIS_MIN_REPLICAS of the web tier, a comma list (e.g. 0,1): the batch and single rows once per "
        "value, named e.g. batch{replicas=1}. Needs a Redis with replicas: point --redis-url at the Sentinel group's "
        "primary (scripts/services.sh up sentinel)",
    )
    parser.add_argument(
        "--kafka-transactions",
        action="store_true",
        help="also run the batch and single rows with KAFKA_TRANSACTIONS=true (rows batch[txn], single[txn]), "
        "their records counted as a read_committed consumer sees them",
    )
    parser.add_argument(
        "--client-processes", type=int, default=1, help="processes running the bare producer loop (default 1)"
    )
    parser.add_argument("--web-workers", type=int, default=2, help="web worker processes (default 2)")
    parser.add_argument("--web-args", default="", help="extra `python -m config.serve` arguments, e.g. '--threads 4'")
    parser.add_argument("--worker-args", default="", help="extra celery worker arguments, e.g. '--pool threads'")
    parser.add_argument("--worker-concurrency", type=int, default=2, help="celery pool processes (default 2)")
    parser.add_argument(
        "--worker-instances",
        type=int,
        default=1,
        help="celery workers side by side (default 1), e.g. 2 with --worker-concurrency 1 --worker-args '--pool solo'",
    )
    parser.add_argument("--sample-every", type=int, default=10, help="POST->Kafka latency of every Nth event")
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=60.0,
        help="give up draining the backlog after this many seconds without progress (default 60)",
    )
    parser.add_argument(
        "--memory-events", type=int, default=20_000, help="events queued to measure Redis bytes/event (batch)"
    )
    parser.add_argument(
        "--broker-payload",
        choices=("events", "random"),
        default="events",
        help="perf test payloads: our serialized events (default) or Kafka's random bytes of the same size",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL"),
        help="Redis for the bench's web and worker tiers (default: REDIS_URL with database 7, or BENCH_REDIS_URL)",
    )
    parser.add_argument(
        "--receipts-matrix",
        action="store_true",
        help="run the batch and single rows twice: with receipts (INGEST_RECEIPTS=true) and without",
    )
    parser.add_argument(
        "--kafka-cluster",
        action="store_true",
        help="also run the batch and single rows against a 3-broker cluster (replication factor 3, acks=all), "
        "rows batch[cluster] and single[cluster]; started with scripts/services.sh unless already running",
    )
    parser.add_argument(
        "--cluster-port", type=int, default=29092, help="the cluster's first broker port (default 29092, then +1, +2)"
    )
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default bench/results/<ts>.json)")
    args = parser.parse_args(argv)
    for setting in [args.fast_paths] if args.fast_paths else []:
        try:
            fast_paths_env(setting)
        except Exception as exc:
            parser.error(f"--fast-paths: {exc}")
    if args.redis_min_replicas is not None and not all(v.strip().isdigit() for v in args.redis_min_replicas.split(",")):
        parser.error(f"--redis-min-replicas: {args.redis_min_replicas!r} is not a comma list of integers, e.g. 0,1")
    unknown = set(args.only.split(",")) - set(ALL)
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))} (choose from {', '.join(ALL)})")
    return args


def fast_paths_env(setting: str) -> str:
    """A --fast-paths value as INGEST_FAST_PATHS: `-NAME` means every fast path but NAME. Raises on unknown names."""
    import fastpaths

    if setting.startswith("-"):
        off = setting[1:]
        fastpaths.parse(off)  # a known name
        return ",".join(name for name in fastpaths.REGISTRY if name != off) or "none"
    fastpaths.parse(setting)
    return setting


def fast_paths_settings(args: argparse.Namespace) -> list[str | None]:
    """The fast-path settings the pipeline rows run with: one (None: the environment's), or the matrix."""
    import fastpaths

    if args.fast_paths_matrix:
        return ["all", "none", *(f"-{name}" for name in fastpaths.REGISTRY)]
    return [args.fast_paths]


@dataclass(frozen=True)
class Backend:
    """The Kafka a pipeline row publishes to: the single broker (no label) or the cluster (`[cluster]`)."""

    label: str | None
    bootstrap: str
    broker_pid: int | list[int] | None
    extra_env: dict[str, str] = field(default_factory=dict)


def row_variants(args: argparse.Namespace, backends: list[Backend]) -> list[tuple[str | None, Backend]]:
    """Each pipeline row runs once per (fast-path setting, backend). Another axis (e.g. with and without Kafka
    transactions) belongs here too: one more label in the row's name and its variable in the tiers' env."""
    return [(setting, backend) for backend in backends for setting in fast_paths_settings(args)]


def row_name(
    phase: str, setting: str | None, backend: Backend, *, transactions: bool = False, receipts: bool | None = None
) -> str:
    """`batch`, `batch[none]`, `batch[cluster]`, `batch[none,cluster,txn]`, `batch[receipts-off]`."""
    receipts_label = None if receipts is None else f"receipts-{'on' if receipts else 'off'}"
    labels = [label for label in (setting, backend.label, "txn" if transactions else None, receipts_label) if label]
    return f"{phase}[{','.join(labels)}]" if labels else phase


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _sample_records(count: int, tag: str, source: str) -> list[Any]:
    """Our events as the publisher turns them into Kafka records (validated, normalized, JSON-encoded)."""
    from bench import events as bench_events
    from events.schema import ValidatedEvent, validate_event
    from publisher.publishing import build_records

    normalized = []
    for raw in bench_events.sample_events(count, tag=tag, phase=bench_events.PHASES["client"]):
        checked = validate_event(raw)
        if not isinstance(checked, ValidatedEvent):
            raise SystemExit(f"bench event is not valid: {checked}")
        normalized.append(checked.data)
    routes = {i: [PERF_TOPIC] for i in range(len(normalized))}
    records, broken = build_records(normalized, routes, {PERF_TOPIC: "json"}, source=source, accepted_at=time.time())
    if broken:
        raise SystemExit("bench events could not be encoded")
    return records


def _ensure_perf_topic(partitions: int) -> None:
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    from publisher.kafka_gateway import admin_client

    admin = admin_client()
    try:
        if PERF_TOPIC in set(admin.list_topics()):
            return
        topic = NewTopic(
            PERF_TOPIC,
            num_partitions=partitions,
            replication_factor=1,
            # Bench data is worthless after the run: keep the disk bounded.
            topic_configs={"retention.ms": "300000", "segment.bytes": str(64 * 1024 * 1024)},
        )
        with contextlib.suppress(TopicAlreadyExistsError):  # created meanwhile by another run
            admin.create_topics([topic])
    finally:
        admin.close()


def _client_limit(
    args: argparse.Namespace, records: list[Any], workdir: Path, broker_pid: int | None
) -> dict[str, Any]:
    from bench import procfs
    from bench.stats import percentiles

    go_file = workdir / "client.go"
    procs, outs, ready_files = [], [], []
    for n in range(args.client_processes):
        config = {
            "topic": PERF_TOPIC,
            "records": [
                [r.key.decode("latin-1"), r.value.decode("latin-1"), [[k, v.decode("latin-1")] for k, v in r.headers]]
                for r in records
            ],
            "warmup": args.warmup,
            "duration": args.duration,
            "sample_every": args.sample_every,
            "ready_file": str(workdir / f"client-{n}.ready"),
            "go_file": str(go_file),
        }
        config_path, out_path = workdir / f"client-{n}.config.json", workdir / f"client-{n}.json"
        config_path.write_bytes(orjson.dumps(config))
        ready_files.append(Path(config["ready_file"]))
        outs.append(out_path)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "bench.client", str(config_path), str(out_path)],
                cwd=ROOT,
                stdout=(workdir / f"client-{n}.log").open("ab"),
                stderr=subprocess.STDOUT,
            )
        )
    deadline = time.time() + 120
    while not all(f.exists() for f in ready_files):
        if time.time() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                p.kill()
            raise RuntimeError(f"client loop did not start, see {workdir}/client-*.log")
        time.sleep(0.1)
    go_file.touch()
    broker = procfs.TreeMeter(broker_pid) if broker_pid else None
    time.sleep(args.warmup)
    if broker:
        broker.start()
    time.sleep(args.duration)
    broker_cpu = broker.stop() if broker else 0.0
    for p in procs:
        p.wait(timeout=args.duration + args.warmup + 120)
        if p.returncode != 0:
            raise RuntimeError(f"client loop failed, see {workdir}/client-*.log")
    parts = [orjson.loads(out.read_bytes()) for out in outs]
    latencies = [lat for part in parts for lat in part.pop("latencies")]
    acked = sum(part["acked_in_window"] for part in parts)
    window = max(part["window_seconds"] for part in parts)
    cpu = sum(part["cpu_seconds"] for part in parts)
    return {
        "processes": args.client_processes,
        "records_per_s": sum(part["records_per_s"] for part in parts),
        "acked_in_window": acked,
        "window_seconds": window,
        "sent": sum(part["sent"] for part in parts),
        "failed": {k: v for part in parts for k, v in part["failed"].items()},
        "cpu_seconds": cpu,
        "ack_latency_ms": percentiles(latencies, scale=1000),
        "cpu_cores": cpu / window,
        "cpu_us_per_record": cpu / acked * 1e6 if acked else None,
        "broker_cpu_cores": broker_cpu / args.duration,
        "producer_config": parts[0]["producer_config"],
    }


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()
    from django.conf import settings
    from rest_framework_api_key.models import APIKey

    from bench import broker as broker_bench
    from bench import cluster as bench_cluster
    from bench import peer, pipeline, procfs, report
    from bench.redis_state import bench_redis_url
    from bench.rows import recorded_producer_config
    from bench.run_settings import Settings, new_tag
    from publisher.kafka_gateway import producer_config

    only = [name for name in ALL if name in args.only.split(",")]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    workdir = ROOT / ".data" / "bench" / stamp
    workdir.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    output = args.output or RESULTS / f"{stamp}.json"
    tag = new_tag()
    redis_url = args.redis_url or bench_redis_url(settings.REDIS_URL)
    redis_port = urlsplit(redis_url).port or 6379
    # The single broker, not a node of a cluster (services.sh marks those).
    broker_pid = procfs.find_pid("kafka.Kafka", without="-Dingest.kafka.node=")
    redis_pid = procfs.find_pid("redis-server", f":{redis_port}")
    bootstrap = ",".join(settings.KAFKA_BROKERS)
    produce = producer_config()

    cluster_dir = ROOT / ".data" / "bench-cluster"
    cluster = None
    if args.kafka_cluster and {"batch", "single"} & set(only):
        cluster = bench_cluster.start(port=args.cluster_port, data_dir=cluster_dir, log=_log)
    backends = [Backend(None, bootstrap, broker_pid)]
    if cluster is not None:
        backends.append(Backend("cluster", cluster.bootstrap, cluster.pids, {"KAFKA_BROKERS": cluster.bootstrap}))

    source = f"bench-{stamp}"
    key_obj, api_key = APIKey.objects.create_key(name=source)
    results: dict[str, Any] = {
        "started_at": stamp,
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "redis_url": redis_url,
        "kafka": {
            "bootstrap": bootstrap,
            "compression": settings.KAFKA_COMPRESSION_TYPE,
            "cluster": cluster.describe() if cluster else None,
        },
        "producer_config": recorded_producer_config(produce),
        "workdir": str(workdir),
        "rows": {},
    }
    try:
        _ensure_perf_topic(settings.KAFKA_TOPIC_PARTITIONS)
        records = _sample_records(1000, tag, source)
        value_sizes = [len(r.value) for r in records]
        header_sizes = [sum(len(k) + len(v) for k, v in r.headers) for r in records]
        record_size = round(sum(value_sizes) / len(value_sizes))
        results["record"] = {
            "avg_value_bytes": record_size,
            "avg_key_bytes": sum(len(r.key) for r in records) / len(records),
            "avg_header_bytes": sum(header_sizes) / len(header_sizes),
            "topic": settings.KAFKA_TOPIC_ATTEMPTS,
            "fan_out": 1,
            "event": "attempt, quality 0-3 (one destination under the default rules)",
        }
        _log(f"bench {stamp}: events of {record_size} bytes JSON, rows {', '.join(only)}; work files in {workdir}")

        if "broker" in only:
            _log("broker: Kafka ProducerPerformance (acks=all)")
            payload_file = None
            if args.broker_payload == "events":
                payload_file = workdir / "payloads.txt"
                payload_file.write_bytes(b"\n".join(r.value for r in records))
            results["rows"]["broker"] = broker_bench.measure(
                duration=args.duration,
                topic=PERF_TOPIC,
                bootstrap=bootstrap,
                compression=settings.KAFKA_COMPRESSION_TYPE,
                linger_ms=int(produce["linger_ms"]),
                batch_bytes=int(produce["batch_size"]),
                payload_file=payload_file,
                record_size=record_size,
                broker_pid=broker_pid,
                log=_log,
            )
            _log(f"  {results['rows']['broker']['records_per_s']:,.0f} records/s")

        if "client" in only:
            _log("client: bare kafka-python producer loop (project settings)")
            results["rows"]["client"] = _client_limit(args, records, workdir, broker_pid)
            _log(f"  {results['rows']['client']['records_per_s']:,.0f} records/s")

        topics = [
            settings.KAFKA_TOPIC_ATTEMPTS,
            settings.KAFKA_TOPIC_SESSIONS,
            settings.KAFKA_TOPIC_PLACEMENTS,
            settings.KAFKA_TOPIC_ACTIVITIES,
            settings.KAFKA_TOPIC_ML_TRAINING,
        ]
        receipt_axis: list[bool | None] = [True, False] if args.receipts_matrix else [None]
        phases = [
            (name, setting, backend, transactions, receipts)
            for name in ("batch", "single", "peer-batch", "peer-single")
            if name in only
            # The peer has no fast paths, transactions or receipts, and runs on the single broker: it runs once.
            for setting, backend in (
                row_variants(args, backends) if not name.startswith("peer") else [(None, backends[0])]
            )
            for transactions in ([False, True] if args.kafka_transactions and not name.startswith("peer") else [False])
            for receipts in (receipt_axis if not name.startswith("peer") else [None])
        ]
        replicas = [None] if args.redis_min_replicas is None else args.redis_min_replicas.split(",")
        for (phase, setting, backend, transactions, receipts), wait in [
            (p, w) for p in phases for w in (replicas if "peer" not in p[0] else [None])
        ]:
            # A row per variant: `batch[none]`, `single[-kafka_batches]`, `batch[cluster,txn]`, `batch{replicas=1}`...
            name = row_name(phase, setting, backend, transactions=transactions, receipts=receipts)
            extra_env = backend.extra_env | ({} if setting is None else {"INGEST_FAST_PATHS": fast_paths_env(setting)})
            if transactions:
                extra_env |= {"KAFKA_TRANSACTIONS": "true", "KAFKA_TRANSACTIONAL_ID_PREFIX": f"bench-{tag}"}
            if receipts is not None:
                extra_env["INGEST_RECEIPTS"] = "true" if receipts else "false"
            if wait is not None:
                name += f"{{replicas={wait.strip()}}}"
                extra_env["INGEST_REDIS_MIN_REPLICAS"] = wait.strip()
            single = phase.endswith("single")
            phase_settings = Settings(
                duration=args.duration,
                warmup=args.warmup,
                concurrency=(args.single_concurrency or args.concurrency) if single else args.concurrency,
                batch_size=args.batch_size,
                web_workers=args.web_workers,
                worker_concurrency=args.worker_concurrency,
                redis_url=redis_url,
                bootstrap=backend.bootstrap,
                topics=topics,
                api_key=api_key,
                source=source,
                tag=tag,
                sample_every=args.sample_every,
                drain_timeout=args.drain_timeout,
                memory_events=args.memory_events if not single else max(1, args.memory_events // 10),
                workdir=workdir,
                own_redis_db=redis_url != settings.REDIS_URL,
                rate=args.single_rate if single else args.rate,
                web_args=shlex.split(args.web_args),
                worker_args=shlex.split(args.worker_args),
                worker_instances=args.worker_instances,
                watch_mode=args.watch,
                offsets_interval=args.offsets_interval,
                log=_log,
                extra_env=extra_env,
                gzip=args.gzip,
                isolation_level="read_committed" if transactions else "read_uncommitted",
            )
            tiers = None
            if phase.startswith("peer"):
                _log(f"{name}: HTTP -> Apache Camel bridge (Java Kafka client) -> Kafka")
                try:
                    peer.ensure_libs(_log)
                except peer.PeerUnavailable as exc:
                    _log(f"  skipped: {exc}")
                    results["rows"][name] = {"skipped": str(exc)}
                    continue
                tiers = peer.PeerTiers(phase_settings, name, topic=settings.KAFKA_TOPIC_ATTEMPTS, producer=produce)
            else:
                _log(
                    f"{name}: HTTP -> granian -> Celery -> Kafka"
                    + (f" ({backend.bootstrap})" if backend.label else "")
                    + (f", INGEST_FAST_PATHS={extra_env['INGEST_FAST_PATHS']}" if setting else "")
                )
            row = pipeline.run_phase(
                phase_settings, name=name, tiers=tiers, broker_pid=backend.broker_pid, redis_pid=redis_pid
            )
            results["rows"][name] = row
            _log(f"  {row['events_per_s']:,.0f} events/s accepted, {row['records_per_s']:,.0f} records/s in Kafka")
    finally:
        APIKey.objects.filter(pk=key_obj.pk).update(revoked=True)
        if cluster is not None:
            bench_cluster.stop(cluster, port=args.cluster_port, data_dir=cluster_dir, log=_log)
        results["finished_at"] = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        report.add_ratios(results)
        output.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    print(report.table(results))
    print(f"\nJSON: {output}")


if __name__ == "__main__":
    main()
