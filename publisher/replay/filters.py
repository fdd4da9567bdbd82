"""Which dead letters a bulk replay takes: the filters, the operator's time expressions, and the preview."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import Count, Q
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from publisher.models import DeadLetter
from publisher.replay.values import Status


@dataclass(frozen=True)
class ReplayFilters:
    """Which pending dead letters a bulk replay takes. Empty fields do not filter."""

    topic: str = ""
    reason: str = ""
    error_class: str = ""
    event_type: str = ""
    since: datetime | None = None  # created_at >= since
    until: datetime | None = None  # created_at < until

    def q(self) -> Q:
        q = Q()
        if self.topic:
            q &= Q(original_topic=self.topic)
        if self.reason:
            q &= Q(reason=self.reason)
        if self.error_class:
            q &= Q(error_class=self.error_class)
        if self.event_type:
            q &= Q(event_type=self.event_type)
        if self.since is not None:
            q &= Q(created_at__gte=self.since)
        if self.until is not None:
            q &= Q(created_at__lt=self.until)
        return q

    def to_json(self) -> dict[str, str]:
        data = {"topic": self.topic, "reason": self.reason, "error_class": self.error_class}
        data["event_type"] = self.event_type
        if self.since is not None:
            data["since"] = self.since.isoformat()
        if self.until is not None:
            data["until"] = self.until.isoformat()
        return {k: v for k, v in data.items() if v}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReplayFilters:
        since, until = data.get("since"), data.get("until")
        return cls(
            topic=str(data.get("topic", "")),
            reason=str(data.get("reason", "")),
            error_class=str(data.get("error_class", "")),
            event_type=str(data.get("event_type", "")),
            since=datetime.fromisoformat(since) if since else None,
            until=datetime.fromisoformat(until) if until else None,
        )

    def describe(self) -> str:
        parts = [f"{name}={value}" for name, value in self.to_json().items()]
        return ", ".join(parts) or "all pending"


_AGE = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> timedelta:
    """'30d', '12h', '90m', '2w', '45s' -> timedelta. Raises ValueError with a usable message."""
    match = _AGE.match(text or "")
    if not match:
        raise ValueError(f"{text!r} is not an age: use a number and a unit, e.g. 30d, 12h, 90m, 2w")
    return timedelta(seconds=int(match.group(1)) * _AGE_UNITS[match.group(2).lower()])


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """An age ('7d': that long ago), an ISO date (midnight UTC) or an ISO datetime (naive means UTC)."""
    now = now or timezone.now()
    if _AGE.match(text or ""):
        return now - parse_age(text)
    moment = parse_datetime(text or "")
    if moment is None:
        day = parse_date(text or "")
        if day is None:
            raise ValueError(f"{text!r} is not a date: use e.g. 2026-11-01, 2026-11-01T12:00:00Z or 7d")
        moment = datetime(day.year, day.month, day.day)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def matching(*, filters: ReplayFilters, max_id: int | None = None) -> Any:
    """Pending rows a bulk replay with these filters would take (a QuerySet)."""
    queryset = DeadLetter.objects.filter(filters.q(), status=Status.PENDING)
    return queryset if max_id is None else queryset.filter(pk__lte=max_id)


def preview(*, filters: ReplayFilters, limit: int | None = None) -> dict[str, Any]:
    """What a replay by filter would do: how many rows, by topic and error class (for --dry-run and the admin)."""
    queryset = matching(filters=filters)
    total = queryset.count()
    by_topic = list(queryset.values("original_topic").annotate(n=Count("id")).order_by("-n")[:20])
    by_error = list(queryset.values("error_class").annotate(n=Count("id")).order_by("-n")[:20])
    return {
        "total": total if limit is None else min(total, limit),
        "matching": total,
        "by_topic": [(r["original_topic"], r["n"]) for r in by_topic],
        "by_error_class": [(r["error_class"], r["n"]) for r in by_error],
        "sample_ids": list(queryset.order_by("id").values_list("id", flat=True)[:10]),
    }
