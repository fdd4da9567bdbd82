"""The client's limit, run in its own process: `python -m bench.client CONFIG.json OUT.json`.

A bare kafka-python loop with the project's producer settings (publisher.kafka_gateway.producer_config()):
pre-serialized records (our events, as the publisher encodes them) with key=user_id and the publisher's
headers, sent as fast as send() takes them. Acknowledgements are counted by callbacks on the futures; the rate
is the acks that arrived between the end of the warm-up and the end of the run, divided by the duration.
Every `sample_every`-th send records its send->ack latency. At most `max_in_flight` (20,000) records wait for
their acknowledgement at a time, as a real producer's buffer would hold them.

Config keys: topic, records ([[key, value, [[name, value], ...]], ...] as latin-1 strings), warmup, duration,
sample_every, max_in_flight (optional), ready_file (written once the producer is connected), go_file (the
clock starts when it exists).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import django
import orjson


def main() -> None:
    config_path, out_path = sys.argv[1], sys.argv[2]
    config: dict[str, Any] = orjson.loads(Path(config_path).read_bytes())
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()
    from kafka import KafkaProducer

    from bench.rows import recorded_producer_config
    from publisher.kafka_gateway import producer_config

    topic = config["topic"]
    records = [
        (k.encode("latin-1"), v.encode("latin-1"), [(n, hv.encode("latin-1")) for n, hv in h])
        for k, v, h in config["records"]
    ]
    sample_every = int(config["sample_every"])
    max_in_flight = int(config.get("max_in_flight", 20_000))
    settings = producer_config(client_id="event-ingestion-bench-client")
    producer = KafkaProducer(**settings)
    producer.partitions_for(topic)  # metadata before the clock starts

    acked = [0]
    failed: dict[str, int] = {}
    latencies: list[float] = []

    def on_ack(_: Any) -> None:
        acked[0] += 1

    failed_total = [0]

    def on_error(exc: BaseException) -> None:
        name = type(exc).__name__
        failed[name] = failed.get(name, 0) + 1
        failed_total[0] += 1

    def timed(t0: float) -> Any:
        def done(_: Any) -> None:
            acked[0] += 1
            latencies.append(time.time() - t0)

        return done

    Path(config["ready_file"]).write_text("ready")
    while not Path(config["go_file"]).exists():
        time.sleep(0.01)
    start = time.time()
    warm_end = start + float(config["warmup"])
    end = warm_end + float(config["duration"])
    count = len(records)
    sent = 0
    measuring = False
    acked_at_warm_end = 0
    cpu_at_warm_end = 0.0
    send = producer.send
    now = start
    while True:
        if sent % 64 == 0:
            now = time.time()
        if now >= end:
            break
        if not measuring and now >= warm_end:
            measuring = True
            acked_at_warm_end = acked[0]
            cpu_at_warm_end = sum(os.times()[:2])
        if sent - acked[0] - failed_total[0] >= max_in_flight:
            # Let the network thread catch up: an unbounded loop holds the GIL, starves the sender thread,
            # and its records then expire in the buffer (KafkaTimeoutError) instead of measuring the client.
            time.sleep(0.0005)
            now = time.time()
            continue
        key, value, headers = records[sent % count]
        future = send(topic, key=key, value=value, headers=headers)
        if measuring and sent % sample_every == 0:
            future.add_callback(timed(time.time()))
        else:
            future.add_callback(on_ack)
        future.add_errback(on_error)
        sent += 1
    acked_in_window = acked[0] - acked_at_warm_end
    cpu_in_window = sum(os.times()[:2]) - cpu_at_warm_end
    window = time.time() - warm_end
    producer.flush(timeout=60)
    producer.close(timeout=10)
    out = {
        "records_per_s": acked_in_window / window,
        "acked_in_window": acked_in_window,
        "window_seconds": window,
        "sent": sent,
        "acked_total": acked[0],
        "failed": failed,
        "latencies": latencies,
        "cpu_seconds": cpu_in_window,
        "producer_config": recorded_producer_config(settings),
    }
    Path(out_path).write_bytes(orjson.dumps(out, default=str))


if __name__ == "__main__":
    main()
