"""A phase's result row, from the load generator's requests, the watcher's counts and the CPU and RSS measured;
and the producer settings as the results record them."""

from __future__ import annotations

from typing import Any

from bench.run_settings import Settings
from bench.stats import percentiles


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
    base_rss: dict[str, list[float]],
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
    # Backpressure (INGEST_MAX_QUEUE_DEPTH, INGEST_MAX_QUEUE_DELAY): the share of requests sent in the window that
    # were refused with 503; the ->Kafka latencies are of accepted events only (refused ones never get there).
    sent_in_window = [r[3] for r in requests if warm_end <= r[1] < end]
    refused = sum(1 for status in sent_in_window if status == 503)
    send_time = {r[0]: r[1] for r in requests}

    records_in_window, records_per_s = _records_in_window(seen, phase, warm_end, end)
    e2e, produce = _sampled_latencies(seen, phase, send_time, warm_end, end)
    missing, duplicated = _completeness(seen, phase, requests, per_request)
    loadgen_cpu = cpu.get("loadgen", 0.0)
    return {
        "phase": name,
        "events_per_request": per_request,
        "concurrency": settings.concurrency,
        "window_seconds": duration,
        "requests_in_window": len(in_window),
        "http_statuses": statuses,
        "http_errors": load["errors"],
        # Errors: 503 is the admission's refusal (reported as refused_share), every other 5xx a failure.
        "http_5xx": sum(1 for r in requests if 500 <= int(r[3]) < 600 and int(r[3]) != 503),
        "refused_share": refused / len(sent_in_window) if sent_in_window else None,
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
        "base_rss_mib": base_rss,
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


def _records_in_window(seen: dict[str, Any], phase: int, warm_end: float, end: float) -> tuple[int, float]:
    """Records of `phase` Kafka timestamped inside the measured window, and their rate."""
    buckets = seen["buckets"].get(str(phase), {})
    first, last = int(warm_end * 10) + 1, int(end * 10)  # whole 100 ms buckets inside the window
    records_in_window = sum(n for b, n in buckets.items() if first <= int(b) < last)
    records_per_s = records_in_window / ((last - first) / 10) if last > first else 0.0
    return records_in_window, records_per_s


def _sampled_latencies(
    seen: dict[str, Any], phase: int, send_time: dict[int, float], warm_end: float, end: float
) -> tuple[list[float], list[float]]:
    """POST -> seen by the watcher, and POST -> Kafka timestamp, of the sampled records sent in the window."""
    e2e, produce = [], []
    for s_phase, request, _index, t_seen, ts_ms in seen["samples"]:
        t0 = send_time.get(request)
        if s_phase != phase or t0 is None or not warm_end <= t0 < end:
            continue
        e2e.append(t_seen - t0)
        produce.append(ts_ms / 1000 - t0)
    return e2e, produce


def _completeness(seen: dict[str, Any], phase: int, requests: list[Any], per_request: int) -> tuple[int, int]:
    """Completeness: every event of a 202 request (accepted, not duplicate) seen once in Kafka? (missing, duplicated)"""
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
    return missing, duplicated


def recorded_producer_config(config: dict[str, Any]) -> dict[str, Any]:
    """Producer settings as the results record them: no secrets, objects (the partitioner) by class name."""
    plain = (str, int, float, bool, type(None), list, tuple)
    return {
        key: value if isinstance(value, plain) else type(value).__name__
        for key, value in config.items()
        if "password" not in key
    }
