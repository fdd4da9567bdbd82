from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from publisher import views as publisher_views

urlpatterns = [
    path("admin/dashboard/", include(publisher_views.dashboard_urlpatterns)),
    path("admin/", admin.site.urls),
    path("api/v1/", include("ingestion.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # Swagger UI's start-up script served as a file (?script), not inline: the CSP runs no inline script.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="api-docs"),
    path("api/routing/", include("routing.urls")),
    path("metrics", publisher_views.prometheus_metrics, name="prometheus-django-metrics"),
    path("metrics/prometheus", publisher_views.prometheus_metrics, name="prometheus-metrics"),
    path("metrics/", include("publisher.urls")),
]

# JSON in the API's error shape under /api/, Django's HTML pages elsewhere (the admin).
handler400 = "ingestion.errors.handler400"
handler403 = "ingestion.errors.handler403"
handler404 = "ingestion.errors.handler404"
handler500 = "ingestion.errors.handler500"
