"""Mounted at metrics/ (config/urls.py): /metrics/publisher and /metrics/publisher/health. /metrics itself and
/metrics/prometheus are in config/urls.py; the dashboard's URLs are publisher.views.dashboard_urlpatterns."""

from django.urls import URLPattern, URLResolver, path

from publisher import views

urlpatterns: list[URLPattern | URLResolver] = [
    path("publisher", views.publisher_stats, name="publisher-stats"),
    path("publisher/health", views.publisher_health, name="publisher-health"),
]
