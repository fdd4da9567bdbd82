"""`python -m bench.task_cost`: the worker's CPU per publish task and per record, with no web tier.

Queues `--tasks` publish tasks of `--events` events each (through publisher.services.enqueue_events, as the
web tier's step-by-step path does), starts the worker as the bench does, and reads the CPU of the worker's
process tree from the moment the first task is queued until Kafka's end offsets show every record. Run it for
a few task sizes to split the cost into a fixed part per task and a part per record:

    python -m bench.task_cost --events 1 --tasks 3000
    python -m bench.task_cost --events 10 --tasks 3000
    python -m bench.task_cost --events 100 --tasks 600

Uses the bench's Redis database (7) and its topic (user.attempts); what it queues is removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import django


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.task_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1, help="events per task (default 1)")
    parser.add_argument("--tasks", type=int, default=2000, help="tasks to queue (default 2000)")
    parser.add_argument("--worker-concurrency", type=int, default=2, help="celery pool processes (default 2)")
    parser.add_argument("--worker-args", default="", help="extra celery worker arguments, e.g. '--pool solo'")
    args = parser.parse_args(argv)

    from bench.redis_state import bench_redis_url

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    # This process queues the tasks: point it at the bench's database before settings are read.
    os.environ["REDIS_URL"] = os.environ["CELERY_BROKER_URL"] = bench_redis_url(
        os.environ.get("REDIS_URL", "redis://127.0.0.1:6380/0")
    )
    django.setup()
    import redis
    from django.conf import settings
    from kafka import KafkaConsumer, TopicPartition

    from bench import events as bench_events
    from bench import procfs
    from bench.processes import ROOT
    from bench.redis_state import purge
    from bench.run_settings import Settings, new_tag
    from bench.tiers import Tiers
    from events.schema import parse_json_body, validate_batch
    from publisher import services

    tag = new_tag()
    workdir = ROOT / ".data" / "bench" / f"task-cost-{tag}"
    workdir.mkdir(parents=True, exist_ok=True)
    s = Settings(
        duration=0, warmup=0, concurrency=1, batch_size=args.events, web_workers=0,
        worker_concurrency=args.worker_concurrency, redis_url=settings.REDIS_URL,
        bootstrap=",".join(settings.KAFKA_BROKERS), topics=[settings.KAFKA_TOPIC_ATTEMPTS], api_key="",
        source="bench-task-cost", tag=tag, sample_every=0, drain_timeout=0, memory_events=0, workdir=Path(workdir),
        worker_args=args.worker_args.split(),
    )  # fmt: skip
    templates = bench_events.body_templates(
        tag=tag, phase=bench_events.PHASES["profile"], batch_size=args.events, variants=16
    )
    batches = []
    for n in range(args.tasks):
        body = bench_events.render(templates[n % len(templates)], n)
        checked = validate_batch(parse_json_body(body), max_batch=max(args.events, 1))
        batches.append([event.data for _, event in checked.valid])

    consumer = KafkaConsumer(bootstrap_servers=settings.KAFKA_BROKERS)
    topic = settings.KAFKA_TOPIC_ATTEMPTS
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]

    def written() -> int:
        return int(sum(consumer.end_offsets(partitions).values()))

    client = redis.Redis.from_url(settings.REDIS_URL)
    tiers = Tiers(s, "task-cost")
    try:
        tiers.start_worker()
        assert tiers.worker is not None
        time.sleep(5)  # the worker finishes importing and connecting
        pids = [p.pid for p in procfs.tree(tiers.worker.pid)]
        target = written() + args.tasks * args.events
        cpu0 = sum(procfs.cpu_seconds(pids).values())
        t0 = time.time()
        for events in batches:
            services.enqueue_events(events=events, source=s.source, accepted_at=time.time())
        while written() < target:
            if time.time() - t0 > 600:
                sys.exit(f"gave up: {target - written()} records not in Kafka after 600 s")
            time.sleep(0.05)
        elapsed = time.time() - t0
        cpu = sum(procfs.cpu_seconds(pids).values()) - cpu0
    finally:
        tiers.stop()
        purge(client, tag, task_keys=True)
        consumer.close()
    records = args.tasks * args.events
    pool = args.worker_args or "prefork"
    print(
        f"{args.tasks} tasks x {args.events} events, worker {args.worker_concurrency} x {pool}: "
        f"{records / elapsed:,.0f} records/s; worker CPU {cpu:.2f} s = {cpu / args.tasks * 1e3:.2f} ms per task, "
        f"{cpu / records * 1e6:.1f} us per record"
    )


if __name__ == "__main__":
    main()
