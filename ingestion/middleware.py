"""django-prometheus' request middleware, minus the two event endpoints.

In multiprocess mode its per-request series (a dozen counters and histograms, each a write to a memory-mapped
file) are a large share of the CPU of a single-event POST (docs/performance.md, first round).
The event endpoints are measured instead by `ingestion_request_duration_seconds` (one histogram, written by
the views) and the `ingestion_events_*` counters; every other path keeps django-prometheus' `django_http_*`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

from django.http import HttpRequest, HttpResponseBase
from django.urls import reverse
from django_prometheus import middleware as django_prometheus


@cache
def ingest_paths() -> frozenset[str]:
    return frozenset({reverse("ingest-event"), reverse("ingest-batch")})


class _SkipEventEndpoints:
    """Hands the event endpoints straight to the next layer; everything else goes through django-prometheus."""

    get_response: Callable[[HttpRequest], HttpResponseBase]

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if request.path_info in ingest_paths():
            return self.get_response(request)
        return super().__call__(request)  # type: ignore[misc]


class PrometheusBeforeMiddleware(_SkipEventEndpoints, django_prometheus.PrometheusBeforeMiddleware):
    pass


class PrometheusAfterMiddleware(_SkipEventEndpoints, django_prometheus.PrometheusAfterMiddleware):
    pass
