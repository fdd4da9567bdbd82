from django.contrib import admin
from django.urls import include, path
from django_prometheus import exports

urlpatterns = [
    path("admin/", admin.site.urls),
    path("metrics", exports.ExportToDjangoView, name="prometheus-django-metrics"),
    path("metrics/prometheus", exports.ExportToDjangoView, name="prometheus-metrics"),
]
