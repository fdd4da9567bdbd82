from django.apps import AppConfig


class PublisherConfig(AppConfig):
    name = "publisher"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        import publisher.signals  # noqa: F401  (connects the Celery worker lifecycle hooks)
        from publisher import kafka_gateway, metrics
        from publisher.models import DeadLetter

        # The configured event topics (no database yet: the routing table's topics are added by the worker).
        topics = [name for name in kafka_gateway.configured_topics() if name != kafka_gateway.TOPIC_DLQ]
        metrics.initialize_series(topics=topics, reasons=DeadLetter.Reason.values)
