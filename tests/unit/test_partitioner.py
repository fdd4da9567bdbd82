"""The producer's partitioner remembers key hashes and must place every key exactly where kafka-python's
default (Java-compatible murmur2) does, so a learner's events stay on one partition whoever produces them."""

from __future__ import annotations

from kafka.partitioner.default import DefaultPartitioner

from publisher.kafka_gateway import KeyHashCachingPartitioner, producer_config


class _Cluster:
    """Partition metadata as kafka-python's ClusterMetadata answers it (a set, in no order)."""

    def __init__(self, partitions: dict[str, set[int]]) -> None:
        self._partitions = partitions

    def topics(self) -> set[str]:
        return set(self._partitions)

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self._partitions.get(topic)

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return self._partitions.get(topic, set())


def test_every_key_lands_where_the_default_partitioner_puts_it() -> None:
    cluster = _Cluster({"three": {2, 0, 1}, "twelve": set(range(11, -1, -1)), "one": {0}})
    ours, default = KeyHashCachingPartitioner(), DefaultPartitioner()
    keys = [f"user-{n}".encode() for n in range(2000)] + [b"", "Łódź-ü".encode(), bytes(range(256))]
    for _ in range(2):  # the second pass answers from the cache
        for topic in ("three", "twelve", "one"):
            for key in keys:
                assert ours.partition(topic, key, key, None, b"v", cluster) == default.partition(
                    topic, key, key, None, b"v", cluster
                ), (topic, key)


def test_the_cache_is_bounded() -> None:
    cluster = _Cluster({"t": {0, 1, 2}})
    ours, default = KeyHashCachingPartitioner(), DefaultPartitioner()
    ours._MAX_KEYS = 10
    for n in range(35):
        key = f"k{n}".encode()
        assert ours.partition("t", key, key, None, b"v", cluster) == default.partition(
            "t", key, key, None, b"v", cluster
        )
    assert len(ours._hashes) <= 10


def test_a_record_without_key_goes_to_one_of_the_partitions() -> None:
    cluster = _Cluster({"t": {0, 1, 2}})
    assert {KeyHashCachingPartitioner().partition("t", None, None, None, b"v", cluster) for _ in range(50)} <= {0, 1, 2}


def test_each_producer_gets_its_own_partitioner() -> None:
    first, second = producer_config()["partitioner"], producer_config()["partitioner"]
    assert isinstance(first, KeyHashCachingPartitioner)
    assert first is not second
