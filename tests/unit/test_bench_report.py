"""The bench's printed table and ratios with the peer rows: what a reader compares our pipeline against."""

from __future__ import annotations

from typing import Any

from bench import report
from bench.events import PHASES, event_id, parse_event_id


def _http_row(records_per_s: float, *, worker: bool) -> dict[str, Any]:
    cores = {"web": 0.5, "kafka_broker": 0.1, "redis": 0.1, "loadgen": 0.05, "kafka_watcher": 0.02}
    rss = {"web": {"sum": 300.0, "largest_process": 110.0}}
    if worker:
        cores["worker"] = 0.9
        rss["worker"] = {"sum": 310.0, "largest_process": 105.0}
    return {
        "events_per_s": records_per_s,
        "records_per_s": records_per_s,
        "http_latency_ms": {"p50": 5, "p95": 15, "p99": 25},
        "e2e_latency_ms": {"p50": 40, "p95": 90, "p99": 120},
        "cpu_cores": cores,
        "peak_rss_mib": rss,
        "queue_memory": {"bytes_per_event": 250.0, "queue_bytes_per_event": 45.0} if worker else {},
        "web_cpu_us_per_event": 25.0,
        "worker_cpu_us_per_record": 60.0 if worker else None,
        "queued_events_at_end": 0,
        "drained": True,
        "drain_seconds": 3.0,
        "missing_in_kafka": 0,
        "duplicated_in_kafka": 0,
        "http_statuses": {"202": 100},
    }


def test_pipeline_rows_are_compared_with_the_peer_and_the_peer_with_the_limits() -> None:
    results: dict[str, Any] = {
        "started_at": "20261127T000000Z",
        "rows": {
            "client": {"records_per_s": 20_000.0, "cpu_cores": 1.1, "ack_latency_ms": None, "acked_in_window": 1,
                       "window_seconds": 30.0, "cpu_us_per_record": 55.0, "broker_cpu_cores": 0.1, "failed": {}},
            "batch": _http_row(15_000.0, worker=True),
            "single": _http_row(2_000.0, worker=True),
            "peer-batch": _http_row(60_000.0, worker=False),
            "peer-single": {"skipped": "`mvn` is not on PATH"},
        },
    }  # fmt: skip
    report.add_ratios(results)
    rows = results["rows"]
    assert rows["batch"]["ratio_to_peer"] == 0.25
    assert rows["single"]["ratio_to_peer"] is None  # its peer row was skipped
    assert rows["peer-batch"]["ratio_to_client"] == 3.0
    assert "ratio_to_peer" not in rows["peer-batch"]

    printed = report.table(results)
    assert "peer-single skipped: `mvn` is not on PATH" in printed
    peer_line = next(line for line in printed.splitlines() if line.startswith("peer-batch "))
    assert "60,000" in peer_line and "3.000" in peer_line
    assert "peer-batch: bridge 25 us CPU/event" in printed
    assert "batch: web 25 us CPU/event, worker 60 us CPU/record, 0.25 x the peer's records/s;" in printed
    assert "single: web 25 us CPU/event, worker 60 us CPU/record; kafka broker" in printed  # no peer figure


def test_peer_rows_have_event_ids_of_their_own() -> None:
    """The Kafka watcher tells rows apart by the phase digit in each event id."""
    for name in ("peer-batch", "peer-single"):
        parsed = parse_event_id(event_id("0badcafe", PHASES[name], 7, "00000000002a").encode())
        assert parsed == (b"0badcafe", PHASES[name], 7, 42)
    assert len(set(PHASES.values())) == len(PHASES)


def test_each_fast_path_is_worth_its_rows_difference_from_all_on() -> None:
    on = _http_row(3_000.0, worker=True) | {"web_cpu_us_per_event": 250.0, "worker_cpu_us_per_record": 150.0}
    off = _http_row(2_000.0, worker=True) | {"web_cpu_us_per_event": 400.0, "worker_cpu_us_per_record": 155.0}
    rows: dict[str, Any] = {
        "single[all]": on,
        "single[none]": _http_row(1_000.0, worker=True),
        "single[-direct_single_event]": off,
        "batch[-kafka_batches]": _http_row(9_000.0, worker=True),  # no batch[all] to compare with
    }
    assert report.fast_path_worth(rows) == [
        "worth of direct_single_event in single: records/s x1.50 with it on (3,000 against 2,000), saves web +150 us "
        "CPU/event, worker +5 us CPU/record"
    ]
