from django.apps import AppConfig


class PublisherConfig(AppConfig):
    name = "publisher"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from publisher import signals  # noqa: F401  (connects the Celery worker lifecycle hooks)
