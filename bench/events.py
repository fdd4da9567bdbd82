"""The bench's synthetic events: attempts with quality 0-3, so the default rules send each to exactly one topic
(`KAFKA_TOPIC_ATTEMPTS`; quality >= 4 would add the ML training topic).

Request bodies are built once as templates with a placeholder that the load generator replaces by the request
number, so every request carries new `client_attempt_id`s (no duplicates) and event ids the Kafka watcher can
decode without a lookup table:

    event_id = TTTTTTTT-IIII-4P00-8000-RRRRRRRRRRRR
               run tag  index  phase   request number (hex)

Pure Python, no Django: the load generator imports this module.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

PLACEHOLDER = b"RRRRRRRRRRRR"  # 12 characters, not hex: a template is never a valid request by accident
PHASES = {
    "batch": 1, "single": 2, "memory-batch": 3, "memory-single": 4, "client": 5, "profile": 6, "probe": 7,
    "peer-batch": 8, "peer-single": 9,
}  # fmt: skip
PHASE_NAMES = {v: k for k, v in PHASES.items()}


def run_tag(rng: random.Random) -> str:
    return f"{rng.getrandbits(32):08x}"


def occurred_at(now: datetime | None = None) -> str:
    """A minute ago, the way a JavaScript client writes it (milliseconds, 'Z')."""
    moment = (now or datetime.now(UTC)) - timedelta(minutes=1)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def event_id(tag: str, phase: int, index: int, request: bytes | str) -> str:
    req = request.decode() if isinstance(request, bytes) else request
    return f"{tag}-{index:04x}-4{phase:x}00-8000-{req}"


def attempt(rng: random.Random, *, tag: str, phase: int, index: int, request: str, when: str) -> dict[str, Any]:
    """One attempt as a learner app sends it (~400 bytes of JSON); quality < 4, so one destination."""
    return {
        "event_type": "attempt",
        "event_id": event_id(tag, phase, index, request),
        "user_id": f"user-{rng.randint(1, 100_000)}",
        "occurred_at": when,
        "client_attempt_id": f"bench-{tag}-{phase:x}-{index:04x}-{request}",
        "session_id": f"sess-{rng.randint(1, 1_000_000)}",
        "item_id": f"item-{rng.randint(1, 5000)}",
        "correct": rng.random() < 0.7,
        "quality": rng.randint(0, 3),
        "time_taken_ms": rng.randint(300, 60_000),
        "response": "the mitochondria is the powerhouse of the cell",
        "metadata": {"app": "web", "app_version": "4.2.1", "ab_bucket": rng.randint(0, 9)},
    }


def body_templates(*, tag: str, phase: int, batch_size: int | None, variants: int, seed: int = 42) -> list[bytes]:
    """`variants` request bodies with PLACEHOLDER where the request number goes. batch_size None: a single
    event object (POST /api/v1/events); otherwise {"events": [...]} (POST /api/v1/events/batch)."""
    rng = random.Random(seed + phase)
    when = occurred_at()
    placeholder = PLACEHOLDER.decode()
    templates = []
    for _ in range(variants):
        if batch_size is None:
            body: Any = attempt(rng, tag=tag, phase=phase, index=0, request=placeholder, when=when)
        else:
            body = {
                "events": [
                    attempt(rng, tag=tag, phase=phase, index=i, request=placeholder, when=when)
                    for i in range(batch_size)
                ]
            }
        templates.append(orjson.dumps(body))
    return templates


def render(template: bytes, request: int) -> bytes:
    return template.replace(PLACEHOLDER, b"%012x" % request)


def sample_events(count: int, *, tag: str, phase: int, seed: int = 7) -> list[dict[str, Any]]:
    """`count` concrete raw events (as clients send them), for record sizes and the Kafka-side loops."""
    rng = random.Random(seed)
    when = occurred_at()
    return [attempt(rng, tag=tag, phase=phase, index=0, request=f"{n:012x}", when=when) for n in range(count)]


def parse_event_id(value: bytes) -> tuple[bytes, int, int, int] | None:
    """(run tag, phase, index, request) from an event id made by `event_id`, None for anything else."""
    if len(value) != 36 or value[23:24] != b"-":
        return None
    try:
        return value[:8], int(value[15:16], 16), int(value[9:13], 16), int(value[24:36], 16)
    except ValueError:
        return None
