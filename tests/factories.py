"""Valid events of each type, as a client would send them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def attempt(**overrides: Any) -> dict[str, Any]:
    event = {
        "event_type": "attempt",
        "user_id": f"user-{uuid.uuid4().hex[:8]}",
        "occurred_at": now_iso(),
        "client_attempt_id": uuid.uuid4().hex,
        "session_id": "s-1",
        "item_id": "item-1",
        "correct": True,
        "quality": 5,
        "time_taken_ms": 1200,
    }
    return event | overrides


def session(**overrides: Any) -> dict[str, Any]:
    event = {
        "event_type": "session",
        "user_id": f"user-{uuid.uuid4().hex[:8]}",
        "occurred_at": now_iso(),
        "session_id": uuid.uuid4().hex,
        "started_at": now_iso(),
        "items_attempted": 3,
        "items_correct": 2,
    }
    return event | overrides


def placement(**overrides: Any) -> dict[str, Any]:
    event = {
        "event_type": "placement",
        "user_id": f"user-{uuid.uuid4().hex[:8]}",
        "occurred_at": now_iso(),
        "placement_id": uuid.uuid4().hex,
        "completed": True,
        "score": 0.75,
    }
    return event | overrides


def activity(**overrides: Any) -> dict[str, Any]:
    event = {
        "event_type": "activity",
        "user_id": f"user-{uuid.uuid4().hex[:8]}",
        "occurred_at": now_iso(),
        "activity_type": "video_watched",
        "properties": {"video_id": "v-1"},
    }
    return event | overrides
