from django.contrib import admin
from django.urls import include, path
from django_prometheus import exports
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("ingestion.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/routing/", include("routing.urls")),
    path("metrics", exports.ExportToDjangoView, name="prometheus-django-metrics"),
    path("metrics/prometheus", exports.ExportToDjangoView, name="prometheus-metrics"),
    path("metrics/", include("publisher.urls")),
]
