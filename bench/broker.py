"""The broker's limit: Kafka's own producer perf test (org.apache.kafka.tools.ProducerPerformance, what
`kafka-producer-perf-test.sh` runs) against the same broker, with acks=all, the project's compression, linger
and batch size, and payloads of the same size as our events.

By default the payloads are our real serialized events (`--payload-file`, one per line), so the record size and
compressibility match what the pipeline sends; `--broker-payload random` uses `--record-size` with the average
size instead (Kafka's random letters compress far worse than JSON). The tool has no duration option, so a short
calibration run sizes the measured run to about `duration` seconds.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import procfs

ROOT = Path(__file__).resolve().parent.parent
LIBS = ROOT / ".cache" / "kafka" / "libs"
PERF_CLASS = "org.apache.kafka.tools.ProducerPerformance"

_SUMMARY = re.compile(
    r"(?P<records>\d+) records sent, (?P<rate>[\d.]+) records/sec \((?P<mb>[\d.]+) MB/sec\), "
    r"(?P<avg>[\d.]+) ms avg latency, (?P<max>[\d.]+) ms max latency, (?P<p50>\d+) ms 50th, "
    r"(?P<p95>\d+) ms 95th, (?P<p99>\d+) ms 99th"
)


@dataclass
class PerfResult:
    records: int
    records_per_s: float
    mb_per_s: float
    latency_avg_ms: float
    latency_max_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    wall_seconds: float
    tool_cpu_seconds: float
    broker_cpu_seconds: float
    command: str


def parse_summary(output: str) -> dict[str, float]:
    """The last summary line of ProducerPerformance (the one with percentiles)."""
    matches = list(_SUMMARY.finditer(output))
    if not matches:
        raise RuntimeError(f"no summary line in ProducerPerformance output:\n{output[-2000:]}")
    return {k: float(v) for k, v in matches[-1].groupdict().items()}


def command(
    *,
    topic: str,
    records: int,
    bootstrap: str,
    compression: str,
    linger_ms: int,
    batch_bytes: int,
    payload_file: Path | None,
    record_size: int,
) -> list[str]:
    payload = ["--payload-file", str(payload_file)] if payload_file is not None else ["--record-size", str(record_size)]
    return [
        "java",
        "-Xmx512m",
        "-cp",
        f"{LIBS}/*",
        PERF_CLASS,
        "--topic",
        topic,
        "--num-records",
        str(records),
        *payload,
        "--throughput",
        "-1",
        "--producer-props",
        f"bootstrap.servers={bootstrap}",
        "acks=all",
        f"compression.type={compression}",
        f"linger.ms={linger_ms}",
        f"batch.size={batch_bytes}",
    ]


def run_once(cmd: list[str], broker_pid: int | None, timeout: float) -> PerfResult:
    broker = procfs.TreeMeter(broker_pid) if broker_pid else None
    if broker:
        broker.start()
    started = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    tool = procfs.TreeMeter(proc.pid)
    tool.start()
    last_cpu = 0.0
    try:
        while proc.poll() is None:
            tool.sample()
            last_cpu = tool.cpu()
            if time.time() - started > timeout:
                proc.kill()
                raise RuntimeError(f"ProducerPerformance did not finish within {timeout:.0f} s")
            time.sleep(0.2)
        output = proc.stdout.read() if proc.stdout else ""
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    wall = time.time() - started
    if proc.returncode != 0:
        raise RuntimeError(f"ProducerPerformance failed ({proc.returncode}):\n{output[-3000:]}")
    summary = parse_summary(output)
    return PerfResult(
        records=int(summary["records"]),
        records_per_s=summary["rate"],
        mb_per_s=summary["mb"],
        latency_avg_ms=summary["avg"],
        latency_max_ms=summary["max"],
        p50_ms=summary["p50"],
        p95_ms=summary["p95"],
        p99_ms=summary["p99"],
        wall_seconds=wall,
        tool_cpu_seconds=last_cpu,
        broker_cpu_seconds=broker.stop() if broker else 0.0,
        command=" ".join(cmd),
    )


def measure(
    *,
    duration: float,
    topic: str,
    bootstrap: str,
    compression: str,
    linger_ms: int,
    batch_bytes: int,
    payload_file: Path | None,
    record_size: int,
    broker_pid: int | None,
    log: Any = print,
) -> dict[str, Any]:
    common: dict[str, Any] = {
        "topic": topic,
        "bootstrap": bootstrap,
        "compression": compression,
        "linger_ms": linger_ms,
        "batch_bytes": batch_bytes,
        "payload_file": payload_file,
        "record_size": record_size,
    }
    # The first run is short and partly before the JIT warms up, so its rate is low: size the real run from
    # it, and run once more if that finished in well under the duration.
    calibration = run_once(command(records=50_000, **common), broker_pid, timeout=120)
    rate = calibration.records_per_s
    for _ in range(2):
        records = max(50_000, int(rate * duration))
        log(f"  {rate:,.0f} records/s so far; measuring {records:,} records")
        result = run_once(command(records=records, **common), broker_pid, timeout=duration * 4 + 60)
        if result.records / result.records_per_s >= 0.7 * duration:
            break
        rate = result.records_per_s
    return asdict(result) | {"calibration_records_per_s": calibration.records_per_s}
