"""The printed table of a bench run (one row per measurement) and the pipeline/broker, pipeline/client and
pipeline/peer ratios."""

from __future__ import annotations

from typing import Any

HTTP_ROWS = ("batch", "single", "peer-batch", "peer-single")


def _base_rss(base: dict[str, list[float]] | None) -> str:
    """Each process's RSS before the load, MiB: main process first, then its children."""
    if not base:
        return ""
    return "; base RSS MiB " + ", ".join(
        f"{tier} " + "/".join(f"{mib:.0f}" for mib in values) for tier, values in base.items() if values
    )


def http_rows(rows: dict[str, Any]) -> list[str]:
    """The pipeline rows present, in run order: the plain names and their fast-path variants (`batch[none]`)."""
    return [name for name in rows if name.split("[")[0].split("{")[0] in HTTP_ROWS]


def add_ratios(results: dict[str, Any]) -> None:
    rows = results.get("rows", {})
    broker = rows.get("broker", {}).get("records_per_s")
    client = rows.get("client", {}).get("records_per_s")
    for name in http_rows(rows):
        row = rows.get(name)
        if not row or "skipped" in row:
            continue
        row["ratio_to_broker"] = row["records_per_s"] / broker if broker else None
        row["ratio_to_client"] = row["records_per_s"] / client if client else None
        if not name.startswith("peer"):
            peer = rows.get(f"peer-{name.split('[')[0]}", {}).get("records_per_s")
            row["ratio_to_peer"] = row["records_per_s"] / peer if peer else None


def fast_path_worth(rows: dict[str, Any]) -> list[str]:
    """What each fast path is worth, from a run with the rows `P[all]` and `P[-name]` (`--fast-paths-matrix`):
    per pipeline row P, records/s with it on against off, and the web and worker CPU it saves per event."""
    lines = []
    for name in http_rows(rows):
        phase, _, setting = name.partition("[")
        if not setting.startswith("-") or "skipped" in rows[name]:
            continue
        on, off = rows.get(f"{phase}[all]"), rows[name]
        if not on or "skipped" in on:
            continue
        ratio = on["records_per_s"] / off["records_per_s"] if off["records_per_s"] else None
        saved_web = _difference(off.get("web_cpu_us_per_event"), on.get("web_cpu_us_per_event"))
        saved_worker = _difference(off.get("worker_cpu_us_per_record"), on.get("worker_cpu_us_per_record"))
        lines.append(
            f"worth of {setting[1:].rstrip(']')} in {phase}: records/s x{_n(ratio, '.2f')} with it on "
            f"({_n(on['records_per_s'])} against {_n(off['records_per_s'])}), saves web {_n(saved_web, '+,.0f')} us "
            f"CPU/event, worker {_n(saved_worker, '+,.0f')} us CPU/record"
        )
    return lines


def _difference(off: float | None, on: float | None) -> float | None:
    return None if off is None or on is None else off - on


def _n(value: Any, fmt: str = ",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def _percent(share: float | None) -> float | None:
    return None if share is None else share * 100


def _pct(p: dict[str, Any] | None) -> str:
    if not p or p.get("p50") is None:
        return "-"
    return f"{p['p50']:.0f}/{p['p95']:.0f}/{p['p99']:.0f}"


def table(results: dict[str, Any]) -> str:
    rows = results.get("rows", {})
    record = results.get("record", {})
    width = max([11, *(len(name) for name in http_rows(rows))])
    head = (
        f"{'row':<{width}} {'events/s':>9} {'records/s':>10} {'HTTP ms p50/95/99':>18} {'->Kafka ms p50/95/99':>21} "
        f"{'web cores':>9} {'wrk cores':>9} {'web MiB':>8} {'wrk MiB':>8} {'B/queued':>9} {'/broker':>7} {'/client':>7}"
    )
    lines = [
        f"Event ingestion bench {results.get('started_at')} - {record.get('avg_value_bytes', '?')} B JSON events, "
        f"compression {results.get('kafka', {}).get('compression')}, acks=all",
        head,
        "-" * len(head),
    ]
    if "broker" in rows:
        b = rows["broker"]
        lat = {"p50": b["p50_ms"], "p95": b["p95_ms"], "p99": b["p99_ms"]}
        lines.append(
            f"{'broker':<{width}} {'-':>9} {_n(b['records_per_s']):>10} {'-':>18} {_pct(lat):>21} "
            f"{'-':>9} {'-':>9} {'-':>8} {'-':>8} {'-':>9} {'-':>7} {'-':>7}"
        )
    if "client" in rows:
        c = rows["client"]
        lines.append(
            f"{'client':<{width}} {'-':>9} {_n(c['records_per_s']):>10} {'-':>18} {_pct(c['ack_latency_ms']):>21} "
            f"{'-':>9} {_n(c['cpu_cores'], '.2f'):>9} {'-':>8} {'-':>8} {'-':>9} "
            f"{_n(c['records_per_s'] / rows['broker']['records_per_s'] if 'broker' in rows else None, '.2f'):>7} "
            f"{'-':>7}"
        )
    for name in http_rows(rows):
        r = rows[name]
        if "skipped" in r:
            lines.append(f"{name:<{width}} skipped: {r['skipped']}")
            continue
        cores = r["cpu_cores"]
        rss = r["peak_rss_mib"]
        lines.append(
            f"{name:<{width}} {_n(r['events_per_s']):>9} {_n(r['records_per_s']):>10} {_pct(r['http_latency_ms']):>18} "
            f"{_pct(r['e2e_latency_ms']):>21} {_n(cores.get('web'), '.2f'):>9} {_n(cores.get('worker'), '.2f'):>9} "
            f"{_n(rss['web']['sum']):>8} {_n(rss.get('worker', {}).get('sum')):>8} "
            f"{_n(r['queue_memory'].get('bytes_per_event')):>9} "
            f"{_n(r.get('ratio_to_broker'), '.3f'):>7} {_n(r.get('ratio_to_client'), '.3f'):>7}"
        )
    details = []
    for name in http_rows(rows):
        if "skipped" in rows[name]:
            continue
        r = rows[name]
        cores = r["cpu_cores"]
        q = r["queue_memory"]
        if name.startswith("peer"):
            tiers = f"bridge {_n(r['web_cpu_us_per_event'])} us CPU/event (the Java process)"
        else:
            tiers = (
                f"web {_n(r['web_cpu_us_per_event'])} us CPU/event, worker {_n(r['worker_cpu_us_per_record'])} us "
                "CPU/record"
            )
            if r.get("ratio_to_peer") is not None:
                tiers += f", {r['ratio_to_peer']:.2f} x the peer's records/s"
        details.append(
            f"{name}: {tiers}; kafka broker {_n(cores.get('kafka_broker'), '.2f')} cores, redis "
            f"{_n(cores.get('redis'), '.2f')}, load generator {_n(cores.get('loadgen'), '.2f')}, kafka watcher "
            f"{_n(cores.get('kafka_watcher'), '.2f')}; queue left at end {r['queued_events_at_end']:,} events, "
            f"drained {'yes' if r['drained'] else 'NO'} in {r['drain_seconds']:.1f} s, accepted but not in Kafka "
            f"at the end {r['missing_in_kafka']:,}, duplicated {r['duplicated_in_kafka']:,}; "
            f"HTTP {r['http_statuses']}, 5xx but 503 {r.get('http_5xx', 0):,}, refused (503) "
            f"{_n(_percent(r.get('refused_share')), '.1f')} % of the requests sent in the window; "
            f"Redis queue list {_n(q.get('queue_bytes_per_event'))} B/event" + _base_rss(r.get("base_rss_mib"))
        )
    if "broker" in rows:
        b = rows["broker"]
        details.append(
            f"broker: {b['records']:,} records, {b['mb_per_s']:.1f} MB/s, broker {b['broker_cpu_seconds']:.1f} CPU s, "
            f"perf tool {b['tool_cpu_seconds']:.1f} CPU s"
        )
    if "client" in rows:
        c = rows["client"]
        details.append(
            f"client: {c['acked_in_window']:,} acks in {c['window_seconds']:.1f} s, "
            f"{_n(c['cpu_us_per_record'], '.1f')} us CPU/record, broker {_n(c['broker_cpu_cores'], '.2f')} cores, "
            f"failed {c['failed'] or 0}"
        )
    return "\n".join(lines + [""] + details + fast_path_worth(rows))
