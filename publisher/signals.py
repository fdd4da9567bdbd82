"""Worker lifecycle: the producer is per process, so each pool process flushes and closes its own on the way out;
the topics operators added in the admin get their series at 0 once the worker is up."""

import logging
from typing import Any

from celery.signals import celeryd_init, worker_process_init, worker_process_shutdown, worker_ready, worker_shutdown
from django.db import DatabaseError

from publisher import kafka_gateway, metrics

logger = logging.getLogger(__name__)


@worker_ready.connect
def _initialize_routed_topic_series(**_: Any) -> None:
    """The routing table's topics, beyond the configured ones publisher.apps already covered. A database that
    cannot be read now only means those series appear with their first event: the worker starts all the same."""
    from publisher.models import DeadLetter
    from routing.services import topic_names

    try:
        topics = topic_names()
    except DatabaseError as exc:
        logger.warning("routing topics unreadable at worker start (%r); their series start with their first event", exc)
        return
    metrics.initialize_series(topics=topics, reasons=DeadLetter.Reason.values)


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
