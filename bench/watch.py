"""Kafka watcher, run in its own process: `python -m bench.watch CONFIG.json OUT.json`.

Counts what the pipeline really wrote to Kafka. It takes the end offsets of every partition of the given topics
at start (only what is written after that counts), then:

- a thread polls the partitions' end offsets (the high watermark: what consumers can see, i.e. acknowledged
  with acks=all) every `offsets_interval` seconds and keeps the timeline. A record at offset o became visible
  at the first poll whose end offset was above o, so POST->Kafka-visible latency is measured to within one
  interval without parsing records while the load runs;
- the main loop reads the records themselves and, for each whose `source` header is the bench's key name and
  whose event id carries the run tag, counts it per phase, by its Kafka timestamp (100 ms buckets, for the
  measured window) and per event (duplicates and losses), and keeps sampled events' offsets and timestamps.

kafka-python spends tens of microseconds of CPU per record it parses, which at the rates measured would take a
good part of a core from the pipeline on a 2-core machine. So in `deferred` mode (the default) the main loop
reads only while the `load_done_file` exists (the probe before the load, then everything after the load), and
the load itself runs against the cheap offsets poller alone. In `live` mode it reads all along, and the visible
time of a sampled record is when this consumer got it.

Config keys: bootstrap_servers, topics, source, tag, sample_every, batch_size (per phase number), mode,
offsets_interval, ready_file, progress_file, load_done_file, stop_file. No Django import.
"""

from __future__ import annotations

import bisect
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer, TopicPartition

from bench.events import parse_event_id

MAX_SLOTS = 200_000_000  # events per phase tracked one by one (200 MB at most)


def _consumer(config: dict[str, Any], client_id: str) -> KafkaConsumer:
    return KafkaConsumer(
        bootstrap_servers=config["bootstrap_servers"],
        client_id=client_id,
        enable_auto_commit=False,
        check_crcs=False,  # the broker checked them; this process must stay cheap
        fetch_min_bytes=64 * 1024,
        fetch_max_wait_ms=50,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
        # read_committed: only committed transactions count, and end offsets stop at the first open one.
        isolation_level=config.get("isolation_level", "read_uncommitted"),
    )


class OffsetsTimeline(threading.Thread):
    """(time, end offsets) each time they changed, polled every `interval` seconds."""

    def __init__(self, config: dict[str, Any], partitions: list[TopicPartition], start: list[int]) -> None:
        super().__init__(name="offsets", daemon=True)
        self.consumer = _consumer(config, "event-ingestion-bench-offsets")
        self.partitions = partitions
        self.interval = float(config["offsets_interval"])
        self.times: list[float] = [time.time()]
        self.offsets: list[list[int]] = [list(start)]
        self.stopping = threading.Event()
        self.cpu = 0.0

    def run(self) -> None:
        cpu0 = time.thread_time()
        while not self.stopping.is_set():
            started = time.time()
            try:
                ends = self.consumer.end_offsets(self.partitions)
            except Exception:  # a slow broker under load: try again at the next tick
                ends = None
            now = time.time()
            if ends is not None:
                current = [ends[tp] for tp in self.partitions]
                if current != self.offsets[-1]:
                    self.times.append(now)
                    self.offsets.append(current)
            self.stopping.wait(max(0.0, self.interval - (now - started)))
        self.cpu = time.thread_time() - cpu0
        self.consumer.close()

    def written(self) -> int:
        return sum(self.offsets[-1]) - sum(self.offsets[0])

    def visible_at(self, partition: int, offset: int) -> float | None:
        """When the record at `offset` of partition number `partition` was first seen below the end offset."""
        column = [row[partition] for row in self.offsets]
        i = bisect.bisect_right(column, offset)  # end offsets only grow
        return self.times[i] if i < len(self.times) else None


def main() -> None:
    config_path, out_path = sys.argv[1], sys.argv[2]
    config: dict[str, Any] = orjson.loads(Path(config_path).read_bytes())
    live = config.get("mode", "deferred") == "live"
    consumer = _consumer(config, "event-ingestion-bench-watch")
    partitions = [
        TopicPartition(topic, p)
        for topic in config["topics"]
        for p in sorted(consumer.partitions_for_topic(topic) or [])
    ]
    index_of = {tp: n for n, tp in enumerate(partitions)}
    consumer.assign(partitions)
    start_offsets = consumer.end_offsets(partitions)
    for tp, offset in start_offsets.items():
        consumer.seek(tp, offset)
    for tp in partitions:
        consumer.position(tp)  # resolve now, before the load starts
    timeline = OffsetsTimeline(config, partitions, [start_offsets[tp] for tp in partitions])
    timeline.start()
    with open(config["ready_file"], "w") as fh:
        fh.write("ready")

    source = config["source"].encode()
    tag = config["tag"].encode()
    sample_every = int(config["sample_every"])
    batch_sizes = {int(k): int(v) for k, v in config["batch_size"].items()}
    stop_file, progress_file, load_done = config["stop_file"], config["progress_file"], config["load_done_file"]

    counts: dict[int, int] = {}  # phase -> records
    foreign = 0  # records of other producers on the same topics (other tests), ignored
    buckets: dict[int, dict[int, int]] = {}  # phase -> Kafka timestamp // 100 ms -> records
    seen: dict[int, bytearray] = {}  # phase -> per event (request * batch + index) deliveries, capped at 255
    # phase, request, index, partition number, offset, Kafka timestamp ms, time this consumer got it
    samples: list[tuple[int, int, int, int, int, int, float]] = []
    cpu0 = sum(os.times()[:2])
    next_progress = 0.0
    reading = live
    while True:
        now = time.time()
        if now >= next_progress:
            next_progress = now + 0.25
            progress = {str(k): v for k, v in counts.items()} | {"written": timeline.written()}
            with open(progress_file + ".tmp", "wb") as fh:
                fh.write(orjson.dumps(progress))
            os.replace(progress_file + ".tmp", progress_file)
            if os.path.exists(stop_file):
                break
            reading = live or os.path.exists(load_done)
        if not reading:
            time.sleep(0.05)
            continue
        polled = consumer.poll(timeout_ms=100, max_records=100_000)
        got = time.time()
        for records in polled.values():
            for record in records:
                src = eid = None
                for name, value in record.headers:
                    if name == "source":
                        src = value
                    elif name == "event_id":
                        eid = value
                if src != source or eid is None or eid[:8] != tag:
                    foreign += 1
                    continue
                parsed = parse_event_id(eid)
                if parsed is None:
                    foreign += 1
                    continue
                _, phase, index, request = parsed
                counts[phase] = counts.get(phase, 0) + 1
                bucket = buckets.setdefault(phase, {})
                b = record.timestamp // 100
                bucket[b] = bucket.get(b, 0) + 1
                slot = request * batch_sizes.get(phase, 1) + index
                marks = seen.setdefault(phase, bytearray())
                if len(marks) <= slot < MAX_SLOTS:
                    marks.extend(bytes(max(slot + 1 - len(marks), len(marks))))
                if slot < len(marks) and marks[slot] < 255:
                    marks[slot] += 1
                if slot % sample_every == 0:
                    tp_index = index_of[TopicPartition(record.topic, record.partition)]
                    samples.append((phase, request, index, tp_index, record.offset, record.timestamp, got))
    cpu = sum(os.times()[:2]) - cpu0
    timeline.stopping.set()
    timeline.join(10)
    consumer.close()
    visible = []
    for phase, request, index, tp_index, offset, ts, got in samples:
        at = got if live else timeline.visible_at(tp_index, offset)
        visible.append((phase, request, index, at if at is not None else got, ts))
    out = {
        "mode": "live" if live else "deferred",
        "counts": {str(k): v for k, v in counts.items()},
        "written_records": timeline.written(),
        "foreign_records": foreign,
        "buckets": {str(k): {str(b): n for b, n in v.items()} for k, v in buckets.items()},
        "seen_marks": {str(k): v.hex() for k, v in seen.items()},
        "samples": visible,
        "offset_polls": len(timeline.times),
        "cpu_seconds": cpu,
    }
    Path(out_path).write_bytes(orjson.dumps(out))


if __name__ == "__main__":
    main()
