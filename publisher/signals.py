"""Worker lifecycle: the producer is per process, so each pool process flushes and closes its own on the way out."""

from typing import Any

from celery.signals import celeryd_init, worker_process_init, worker_process_shutdown, worker_shutdown

from publisher import kafka_gateway


@worker_process_shutdown.connect
def _flush_producer_in_pool_process(**_: Any) -> None:
    kafka_gateway.close_producer()


@worker_shutdown.connect
def _flush_producer_in_main_process(**_: Any) -> None:
    kafka_gateway.close_producer()


@celeryd_init.connect
def _remember_worker_name(sender: str, **_: Any) -> None:
    """The node name, in the worker's main process before it forks: part of each slot's transactional id."""
    kafka_gateway.set_worker_name(sender)


@worker_process_init.connect
def _settle_predecessor_transaction(**_: Any) -> None:
    """A new pool process takes its slot's transactional id at once, so what a dead predecessor left open in
    Kafka is settled now (KAFKA_TRANSACTIONS only)."""
    kafka_gateway.prepare_transactional_slot()
