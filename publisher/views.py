"""Metrics, publisher statistics, health, and the operator dashboard.

    /metrics, /metrics/prometheus   Prometheus text: every process's series (multiprocess mode) plus the
                                    gauges computed at scrape time (queue depth, breaker state, pending DLQ)
    /metrics/publisher              JSON statistics (publisher.stats) with breaker state and queue depth
    /metrics/publisher/health       JSON health report (publisher.health); 503 when unhealthy. Anyone gets the
                                    statuses; the details (addresses, errors) only a caller admitted by
                                    loopback, token or staff
    /admin/dashboard/               charts for operators (staff, through the admin), fed by data.json

Who may read /metrics*: settings.METRICS_ACCESS, one or more (comma-separated, any grants) of
    loopback  the client address (config.client_address: behind NUM_PROXIES proxies, the forwarded one) in
              127.0.0.0/8 or ::1 (the default)
    token     `Authorization: Bearer <METRICS_TOKEN>`
    staff     a logged-in staff user (session)
    open      anyone
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Callable, Iterator
from functools import wraps
from typing import Any

import prometheus_client
from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from config.client_address import client_address
from publisher import breaker, health, metrics, queue, stats

logger = logging.getLogger(__name__)

ACCESS_MODES = frozenset({"loopback", "token", "staff", "open"})
View = Callable[..., HttpResponse]


# ------------------------------------------------------------------------------------------------ access


def _access_modes() -> set[str]:
    raw = getattr(settings, "METRICS_ACCESS", "loopback")
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    return {str(item).strip().lower() for item in items if str(item).strip()}


def _is_loopback(request: HttpRequest) -> bool:
    ip = client_address(request.META)
    return ip is not None and ip.is_loopback


def _has_token(request: HttpRequest) -> bool:
    expected = str(getattr(settings, "METRICS_TOKEN", "") or "")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # As bytes: compare_digest refuses str with non-ASCII characters (a 500); the token itself is ASCII.
    given_bytes = given.strip(" \t").encode("utf-8", "surrogatepass")  # str.strip() would also eat U+2028
    return bool(expected) and scheme.lower() == "bearer" and hmac.compare_digest(given_bytes, expected.encode())


def _admitted_by(request: HttpRequest) -> str | None:
    """The METRICS_ACCESS mode that lets this request in (a caller it identifies before `open`), or None."""
    modes = _access_modes()
    if "loopback" in modes and _is_loopback(request):
        return "loopback"
    if "token" in modes and _has_token(request):
        return "token"
    user = getattr(request, "user", None)
    if "staff" in modes and user is not None and user.is_authenticated and user.is_staff:
        return "staff"
    if "open" in modes:
        return "open"
    return None


def metrics_access_denied(request: HttpRequest) -> HttpResponse | None:
    """None when METRICS_ACCESS lets this request in, else the 401/403 answer. Unknown modes grant nothing."""
    if _admitted_by(request) is not None:
        return None
    modes = _access_modes()
    if unknown := modes - ACCESS_MODES:
        logger.error("METRICS_ACCESS has unknown modes %s; expected %s", sorted(unknown), sorted(ACCESS_MODES))
    if "token" in modes:
        response = JsonResponse({"error": "a valid bearer token is required"}, status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return JsonResponse({"error": "metrics are not available to this client"}, status=403)


def metrics_access(view: View) -> View:
    @wraps(view)
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        return metrics_access_denied(request) or view(request, *args, **kwargs)

    return guarded


# ------------------------------------------------------------------------------------------- Prometheus


def _scrape_time_values() -> dict[str, float | None]:
    try:
        depth: float | None = float(queue.depth(fresh=True))
    except Exception as exc:
        logger.warning("queue depth unavailable for /metrics: %r", exc)
        depth = None
    state = breaker.STATE_VALUES.get(breaker.current_state())
    pending = stats.pending_dead_letters()
    return {
        "ingestion_queue_depth": depth,
        "publisher_circuit_breaker_state": None if state is None else float(state),
        "dlq_pending_entries": None if pending is None else float(pending),
    }


class PipelineCollector(Collector):
    """All processes' series (MultiProcessCollector over PROMETHEUS_MULTIPROC_DIR; the default registry when
    multiprocess mode is off), with the shared-state gauges replaced by values read at scrape time."""

    def collect(self) -> Iterator[Metric]:
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        source: Any = prometheus_client.REGISTRY
        if directory:
            os.makedirs(directory, exist_ok=True)  # removed under a running server: start over, don't fail
            source = MultiProcessCollector(None, path=directory)
        for family in source.collect():
            if family.name not in metrics.SCRAPE_TIME_GAUGES:
                yield family
        for name, value in _scrape_time_values().items():
            if value is not None:
                yield GaugeMetricFamily(name, metrics.SCRAPE_TIME_GAUGES[name], value=value)


@never_cache
@require_GET
@metrics_access
def prometheus_metrics(request: HttpRequest) -> HttpResponse:
    output = prometheus_client.generate_latest(PipelineCollector())
    return HttpResponse(output, content_type=prometheus_client.CONTENT_TYPE_LATEST)


# ------------------------------------------------------------------------------------------ JSON: stats


def _now_iso() -> str:
    return stats.iso_time(time.time()) or ""


def _live_state() -> dict[str, Any]:
    try:
        depth: int | None = queue.depth(fresh=True)
    except Exception:
        depth = None
    return {
        "breaker_state": breaker.current_state(),
        "queue_depth": depth,
        "dlq_pending": stats.pending_dead_letters(),
    }


@never_cache
@require_GET
@metrics_access
def publisher_stats(request: HttpRequest) -> HttpResponse:
    try:
        snapshot = stats.snapshot()
    except Exception as exc:
        logger.warning("publisher stats unreadable: %r", exc)
        return JsonResponse({"error": f"statistics store unreachable: {exc.__class__.__name__}"}, status=503)
    return JsonResponse(snapshot | _live_state() | {"generated_at": _now_iso()})


@never_cache
@require_GET
def publisher_health(request: HttpRequest) -> HttpResponse:
    """Statuses for anyone (load balancers, uptime checks); the details name hosts, users and raw driver errors,
    so only a caller METRICS_ACCESS identifies gets them (`open` identifies nobody)."""
    report = health.evaluate()
    status = 503 if report["status"] == health.UNHEALTHY else 200
    if _admitted_by(request) in ("loopback", "token", "staff"):
        return JsonResponse(report, status=status)
    return JsonResponse(health.statuses_only(report), status=status)


# ------------------------------------------------------------------------------------------- dashboard


def dashboard(request: HttpRequest) -> HttpResponse:
    context = admin.site.each_context(request) | {
        "title": "Publishing dashboard",
        "data_url": reverse("admin-dashboard-data"),
        "refresh_ms": 5000,
        "history_minutes": stats.HISTORY_MINUTES,
    }
    return TemplateResponse(request, "admin/dashboard.html", context)


@never_cache
def dashboard_data(request: HttpRequest) -> HttpResponse:
    """Per-minute series for the last hour (oldest first) and the current state, for the dashboard's charts."""
    try:
        points = stats.timeseries()
        snapshot = stats.snapshot()
    except Exception as exc:
        logger.warning("dashboard data unreadable: %r", exc)
        return JsonResponse({"error": f"statistics store unreachable: {exc.__class__.__name__}"}, status=503)
    topics = sorted({topic for point in points for topic in point["topics"]} | set(snapshot["topics"]))
    recent = snapshot["recent"]
    return JsonResponse(
        {
            "generated_at": _now_iso(),
            "minutes": [point["t"] for point in points],
            "throughput": {topic: [point["topics"].get(topic, 0) for point in points] for topic in topics},
            "published": [point["published"] for point in points],
            "failed": [point["failed"] for point in points],
            "dlq": [point["dlq"] for point in points],
            "error_rate": [point["error_rate"] for point in points],
            "dlq_rate": [point["dlq_rate"] for point in points],
            "latency_ms": {q: [point[f"{q}_latency_ms"] for point in points] for q in ("p50", "p95", "p99")},
            "summary": {
                "events_published": snapshot["events_published"],
                "events_failed": snapshot["events_failed"],
                "events_dlq": snapshot["events_dlq"],
                "avg_latency_ms": snapshot["avg_latency_ms"],
                "p95_latency_ms": snapshot["p95_latency_ms"],
                "last_publish_at": snapshot["last_publish_at"],
                "recent_error_rate": recent["error_rate"],
                "recent_dlq_rate": recent["dlq_rate"],
                "recent_events_per_second": recent["events_per_second"],
                **_live_state(),
            },
        }
    )


# Mounted at /admin/dashboard/ (config/urls.py, before the admin's own URLs): staff only, through the admin.
dashboard_urlpatterns: list[URLPattern] = [
    path("", admin.site.admin_view(dashboard), name="admin-dashboard"),
    path("data.json", admin.site.admin_view(dashboard_data), name="admin-dashboard-data"),
]
