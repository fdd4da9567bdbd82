from django.urls import path

from ingestion.views import BatchView, EventView, ReceiptView

urlpatterns = [
    path("events", EventView.as_view(), name="ingest-event"),
    path("events/batch", BatchView.as_view(), name="ingest-batch"),
    path("events/<str:event_id>", ReceiptView.as_view(), name="event-receipt"),
]
