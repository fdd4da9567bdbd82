"""Micro-benchmark of event validation on the ingest hot path (not a test).

    python -m bench.validation [--iterations N] [--repeats R]

Builds 100-event batches of mixed event types (the shapes real clients send: millisecond 'Z' timestamps
from JavaScript, '+02:00' offsets, with and without client event_ids, small metadata) and prints
microseconds per event for parse_json_body + validate_batch, validate_batch alone, and orjson.loads
alone for reference. Reports the best and the median of R rounds of N batches per case.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson

from events.schema import parse_json_body, validate_batch

BATCH_SIZE = 100
CEST = timezone(timedelta(hours=2))


def _timestamp(rng: random.Random, now: datetime) -> str:
    moment = now - timedelta(seconds=rng.randint(0, 86_400), microseconds=rng.randint(0, 999_999))
    style = rng.randrange(3)
    if style == 0:  # JavaScript Date.toISOString()
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    if style == 1:  # Python isoformat() with a local offset
        return moment.astimezone(CEST).isoformat()
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # already canonical


def make_event(rng: random.Random, now: datetime, i: int) -> dict[str, Any]:
    kind = ("attempt", "attempt", "attempt", "session", "placement", "activity")[i % 6]
    event: dict[str, Any] = {
        "event_type": kind,
        "user_id": f"user-{rng.randint(1, 10**6)}",
        "occurred_at": _timestamp(rng, now),
        "metadata": {"app": "web", "app_version": "4.2.1", "ab_bucket": rng.randint(0, 9)},
    }
    if rng.random() < 0.5:
        event["event_id"] = str(uuid.uuid4())
    if kind == "attempt":
        event |= {
            "client_attempt_id": str(uuid.uuid4()),
            "session_id": f"sess-{rng.randint(1, 10**6)}",
            "item_id": f"item-{rng.randint(1, 5000)}",
            "correct": rng.random() < 0.7,
            "quality": rng.randint(0, 5),
            "time_taken_ms": rng.randint(300, 60_000),
            "response": "the mitochondria is the powerhouse of the cell",
        }
    elif kind == "session":
        event |= {
            "session_id": f"sess-{rng.randint(1, 10**6)}",
            "started_at": "2026-11-26T10:00:00Z",
            "ended_at": "2026-11-26T10:25:31.250+00:00",
            "items_attempted": 20,
            "items_correct": 17,
        }
    elif kind == "placement":
        event |= {"placement_id": f"pl-{rng.randint(1, 999)}", "completed": True, "score": 0.82, "level": "B1"}
    else:
        event |= {"activity_type": "video_watched", "properties": {"video_id": "v-77", "seconds": 212, "muted": False}}
    return event


def _measure(cases: list[tuple[str, Callable[[], object]]], iterations: int, repeats: int) -> dict[str, list[float]]:
    """Microseconds per event for each case, one sample per round. Cases are interleaved round by
    round so that load from other processes hits them alike; the best round is the least disturbed."""
    samples: dict[str, list[float]] = {name: [] for name, _ in cases}
    for _, fn in cases:
        fn()  # warm up
    for _ in range(repeats):
        for name, fn in cases:
            start = time.perf_counter()
            for _ in range(iterations):
                fn()
            samples[name].append((time.perf_counter() - start) / (iterations * BATCH_SIZE) * 1e6)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=100, help="batches per case per round (default 100)")
    parser.add_argument("--repeats", type=int, default=21, help="rounds (default 21)")
    args = parser.parse_args()

    rng = random.Random(42)  # synthetic data, reproducible
    now = datetime.now(UTC)
    body = orjson.dumps({"events": [make_event(rng, now, i) for i in range(BATCH_SIZE)]})
    parsed = parse_json_body(body)

    check = validate_batch(parsed, max_batch=BATCH_SIZE, now=now)
    if check.invalid or check.body_errors:
        raise SystemExit(f"benchmark batch is not valid: {check.invalid[:1] or check.body_errors}")

    cases: list[tuple[str, Callable[[], object]]] = [
        ("parse_json_body + validate_batch", lambda: validate_batch(parse_json_body(body), max_batch=BATCH_SIZE)),
        ("validate_batch alone (pre-parsed)", lambda: validate_batch(parsed, max_batch=BATCH_SIZE)),
        ("orjson.loads alone (reference)", lambda: orjson.loads(body)),
    ]
    print(f"{BATCH_SIZE}-event mixed batches, {len(body) / BATCH_SIZE:.0f} bytes/event of JSON, ", end="")
    print(f"{args.repeats} rounds x {args.iterations} batches")
    for name, rounds in _measure(cases, args.iterations, args.repeats).items():
        print(f"  {name:36s} {min(rounds):6.2f} us/event best   {statistics.median(rounds):6.2f} us/event median")


if __name__ == "__main__":
    main()
