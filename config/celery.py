"""The Celery application: configured from Django settings (CELERY_*), tasks discovered in the apps."""

import os
from typing import Any

from celery import Celery
from celery.signals import worker_process_shutdown

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("ingestion")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_process_shutdown.connect
def _mark_prometheus_process_dead(**_: Any) -> None:
    """A pool process on its way out: drop its live-gauge files (its counters stay, so totals never go down).
    Its files are named after it (config.prometheus_process_id), see config/__init__.py."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        from config import prometheus_process_id

        multiprocess.mark_process_dead(prometheus_process_id())
