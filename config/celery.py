"""The Celery application: configured from Django settings (CELERY_*), tasks discovered in the apps."""

import os
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown, worker_ready

from fastpaths import celery_orjson

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

# Fast path celery_orjson (fastpaths/): kombu's "json" serializer through orjson and msgspec; off, kombu's own.
celery_orjson.install()

app = Celery("ingestion")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_ready.connect
@worker_process_init.connect
def _settle_heap(**_: Any) -> None:
    """The main process once the worker is up, and each pool process once forked (config.heap)."""
    from config.heap import settle_after_startup

    settle_after_startup()


@worker_ready.connect
def _describe_fast_paths(**_: Any) -> None:
    import fastpaths

    fastpaths.log_once("worker")


@worker_process_shutdown.connect
def _mark_prometheus_process_dead(**_: Any) -> None:
    """A pool process on its way out: drop its live-gauge files (its counters stay, so totals never go down).
    Its files are named after it (config.prometheus_process_id), see config/__init__.py."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        from config import prometheus_process_id

        multiprocess.mark_process_dead(prometheus_process_id())
