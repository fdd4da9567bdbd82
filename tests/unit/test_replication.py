"""How ensure_topics replicates new topics, decided from the live brokers (kafka_gateway.replication_for)."""

from __future__ import annotations

import pytest

from publisher.kafka_gateway import Replication, ReplicationError, replication_for


@pytest.mark.parametrize(
    ("brokers", "factor", "min_isr"),
    [(1, 1, 1), (2, 2, 1), (3, 3, 2), (5, 3, 2)],
)
def test_auto_replicates_to_at_most_three_with_two_in_sync_from_three(brokers: int, factor: int, min_isr: int) -> None:
    assert replication_for(live_brokers=brokers, replication_factor=None) == Replication(factor, min_isr, brokers)


def test_an_explicit_factor_is_kept_and_sets_min_insync() -> None:
    assert replication_for(live_brokers=5, replication_factor=5) == Replication(5, 2, 5)
    assert replication_for(live_brokers=3, replication_factor=1) == Replication(1, 1, 3)


def test_more_copies_than_live_brokers_is_refused_naming_both() -> None:
    with pytest.raises(ReplicationError, match="replication factor 3 needs 3 live brokers, the cluster has 2"):
        replication_for(live_brokers=2, replication_factor=3)


def test_no_live_broker_is_refused() -> None:
    with pytest.raises(ReplicationError, match="no live Kafka broker"):
        replication_for(live_brokers=0, replication_factor=None)
