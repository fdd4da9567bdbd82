"""Queries behind the dead-letter admin, built for a table of millions of rows: no full COUNT (a capped count
and a status GROUP BY), filter choices from a loose index scan instead of SELECT DISTINCT, exact-match search on
indexed columns, and list rows without their payloads."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

from django.core.cache import cache
from django.db import connection
from django.db.models import Count, Q, QuerySet

from events.tracecontext import parse_traceparent
from publisher.models import DeadLetter, ReplayAttempt, ReplayJob

# The list shows none of these, and each can be tens of KiB per row.
LIST_DEFERRED_FIELDS = ("payload", "original_payload", "value", "headers", "error_message", "delivered_topics")


def capped_count(queryset: QuerySet[Any], *, cap: int) -> int:
    """How many rows, counting at most cap + 1 (an index-only scan that stops early) instead of COUNT(*)."""
    return queryset.order_by().values("pk")[: cap + 1].count()


def for_list(queryset: QuerySet[Any]) -> QuerySet[Any]:
    return queryset.defer(*LIST_DEFERRED_FIELDS)


def search(queryset: QuerySet[DeadLetter], term: str) -> QuerySet[DeadLetter]:
    """Exact matches on indexed columns: the user id, the record key, the event id when the term is a UUID, the
    trace id when it is a W3C trace id or a whole traceparent."""
    term = term.strip()
    if not term:
        return queryset
    condition = Q(user_id=term) | Q(key=term)
    context = parse_traceparent(term)
    trace_id = context.trace_id if context is not None else term.lower()
    if len(trace_id) == 32 and all(c in "0123456789abcdef" for c in trace_id):
        condition |= Q(trace_id=trace_id)

    with contextlib.suppress(ValueError):  # not a UUID: search user id and key only
        condition |= Q(event_id=uuid.UUID(term))
    return queryset.filter(condition)


def distinct_values(column: str, *, limit: int = 200) -> list[str]:
    """SELECT DISTINCT column, done as a loose index scan (a recursive CTE hopping through the btree): a few
    milliseconds for a handful of values in millions of rows, where a plain DISTINCT reads the whole index."""
    table = connection.ops.quote_name(DeadLetter._meta.db_table)
    col = connection.ops.quote_name(column)
    sql = f"""
        WITH RECURSIVE t(v) AS (
            (SELECT {col} FROM {table} ORDER BY {col} LIMIT 1)
            UNION ALL
            SELECT (SELECT {col} FROM {table} WHERE {col} > t.v ORDER BY {col} LIMIT 1) FROM t WHERE t.v IS NOT NULL
        )
        SELECT v FROM t WHERE v IS NOT NULL LIMIT %s
    """  # noqa: S608  (identifiers come from this module, the value is a parameter)
    with connection.cursor() as cursor:
        cursor.execute(sql, [limit])
        return [row[0] for row in cursor.fetchall()]


STATUS_COUNTS_CACHE_KEY = "publisher:deadletter-status-counts"
STATUS_COUNTS_TTL = 5  # seconds: operators reloading the list share one count


def status_counts() -> dict[str, int]:
    """Entries per status: one GROUP BY (an index-only scan of the (status, id) index, cheap even over millions
    of rows), not a COUNT per status, shared for a few seconds through the cache."""
    try:
        cached = cache.get(STATUS_COUNTS_CACHE_KEY)
    except Exception:  # Redis down: count anyway
        cached = None
    if isinstance(cached, dict):
        return cached
    rows = DeadLetter.objects.order_by().values("status").annotate(n=Count("*"))
    counts = {row["status"]: row["n"] for row in rows}
    with contextlib.suppress(Exception):  # Redis down: the next page load counts again
        cache.set(STATUS_COUNTS_CACHE_KEY, counts, STATUS_COUNTS_TTL)
    return counts


def replay_attempts(dead_letter: DeadLetter, *, limit: int = 50) -> list[ReplayAttempt]:
    """A dead letter's replay history, newest first."""
    return list(ReplayAttempt.objects.filter(dead_letter=dead_letter).select_related("job").order_by("-at")[:limit])


def recent_jobs(*, limit: int = 20) -> QuerySet[ReplayJob]:
    return ReplayJob.objects.select_related("created_by").order_by("-created_at")[:limit]
