from django.urls import path

from ingestion.views import BatchView, EventView

urlpatterns = [
    path("events", EventView.as_view(), name="ingest-event"),
    path("events/batch", BatchView.as_view(), name="ingest-batch"),
]
