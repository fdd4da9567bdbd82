"""A publish task that kills its worker (a crash in a C extension, memory blow-up) or fails unexpectedly on every
delivery must not come back forever: after PUBLISHER_POISON_MAX_DELIVERIES its events are dead-lettered unsent."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence, Set
from typing import Any

from events.tracecontext import TraceContext
from publisher import dead_letters
from publisher.models import DeadLetter
from publisher.publishing import build_records, owed_records, plan_routes
from routing.services import current_routing

logger = logging.getLogger(__name__)


class PoisonTaskError(Exception):
    """The task carrying this record killed its worker repeatedly."""


def dead_letter_task(
    *,
    events: Sequence[Mapping[str, Any]],
    source: str,
    routes: Mapping[str, Sequence[str]] | None,
    deliveries: int,
    delivered: Set[tuple[int, str]] = frozenset(),
    in_doubt_since: float | None = None,
    traces: Sequence[TraceContext] | None = None,
) -> None:
    """Dead-letter what the task still owed. `delivered`: the (index, topic) pairs Kafka already acknowledged in
    its earlier runs; a dead letter of those would be published a second time by its replay."""
    if routes is None:
        planned, formats, _ = plan_routes(events)
    else:
        planned = {int(i): list(topics) for i, topics in routes.items()}
        formats = current_routing().topic_formats
    if delivered:
        planned = {i: [t for t in topics if (i, t) not in delivered] for i, topics in planned.items()}
        planned = {i: topics for i, topics in planned.items() if topics}
    records, unencodable = build_records(
        events, planned, formats, source=source, accepted_at=time.time(), traces=traces
    )

    if in_doubt_since is not None:
        # A run killed mid-send may have written some of them: those are delivered, not poison.
        records = owed_records(events, records, since=in_doubt_since, on_delivered=None)
    error = PoisonTaskError(
        f"the publish task ran {deliveries} times and never finished (its worker died or it failed each time)"
    )
    for record in records:
        record.attempts = deliveries
        record.error = error
    failures = [(r, DeadLetter.Reason.POISON_TASK) for r in records] + [
        (r, DeadLetter.Reason.PERMANENT_ERROR) for r in unencodable
    ]
    logger.error(
        "poison task: dead-lettering %d deliveries", len(failures), extra={"event": "poison_task", "runs": deliveries}
    )
    dead_letters.record(events=events, failures=failures, source=source)
