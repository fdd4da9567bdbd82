"""Worker lifecycle: the producer is per process, so each pool process flushes and closes its own on the way out."""

from typing import Any

from celery.signals import worker_process_shutdown, worker_shutdown

from publisher import kafka_gateway


@worker_process_shutdown.connect
def _flush_producer_in_pool_process(**_: Any) -> None:
    kafka_gateway.close_producer()


@worker_shutdown.connect
def _flush_producer_in_main_process(**_: Any) -> None:
    kafka_gateway.close_producer()
