"""A 3-broker Kafka cluster (scripts/services.sh with KAFKA_NODES=3) on its own ports beside the shared broker:
topics replicated by ensure_topics, and the leader broker of the attempts topic's busiest partition killed under
load. Takes minutes: `make test-faults`."""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from publisher.models import DeadLetter
from routing.models import Topic
from tests import factories
from tests.cluster import Cluster
from tests.conftest import KafkaReader, WebServer, WorkerProcess
from tests.integration.test_faults import FAULT_ENV, Load, Stack

pytestmark = [pytest.mark.slow, pytest.mark.multinode, pytest.mark.django_db(transaction=True)]
ROOT = Path(__file__).resolve().parents[2]
# The web and worker of these tests queue in their own Redis database, flushed before each test.
REDIS_URL = os.environ.get("TEST_FAULT_REDIS_URL", "redis://127.0.0.1:6380/9")
# A killed broker is fenced when its session times out (Kafka's broker.session.timeout.ms, 9 s), then its
# partitions get new leaders at once: allowed, with room for a busy machine.
FAILOVER_WINDOW = 30.0


def test_ensure_topics_replicates_three_times_with_two_in_sync(kafka_cluster: Cluster, settings: Any) -> None:
    again = kafka_cluster.ensure_topics()
    assert again.returncode == 0, again.stderr
    assert "replication factor 3 (3 live brokers), min.insync.replicas 2" in again.stdout
    assert f"topic {settings.KAFKA_TOPIC_ATTEMPTS} already exists" in again.stdout
    topics = [settings.KAFKA_TOPIC_ATTEMPTS, settings.KAFKA_TOPIC_ML_TRAINING, "dlq.events"]
    for topic in topics:
        partitions = kafka_cluster.describe(topic)["partitions"]
        assert len(partitions) == settings.KAFKA_TOPIC_PARTITIONS
        assert all(len(p["replica_nodes"]) == 3 for p in partitions), partitions
    admin = KafkaAdminClient(bootstrap_servers=kafka_cluster.bootstrap)
    try:
        configs = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t, {"min.insync.replicas": None}) for t in topics],
            config_filter="all",
        )["topic"]
    finally:
        admin.close()
    assert {t: configs[t]["min.insync.replicas"]["value"] for t in topics} == dict.fromkeys(topics, "2")


def test_an_existing_topic_with_one_copy_is_reported_and_fails(kafka_cluster: Cluster) -> None:
    admin = KafkaAdminClient(bootstrap_servers=kafka_cluster.bootstrap)
    try:
        if "test.one-copy" not in admin.list_topics():
            admin.create_topics(
                {"test.one-copy": {"num_partitions": 1, "replication_factor": 1}}, wait_for_metadata=True
            )
    finally:
        admin.close()
    Topic.objects.create(name="test.one-copy")  # a routed topic: ensure_topics checks it
    refused = kafka_cluster.ensure_topics()
    assert refused.returncode == 1
    assert "topic test.one-copy has replication factor 1 and min.insync.replicas 1" in refused.stderr
    assert "1 under-replicated topic(s)" in refused.stderr
    accepted = kafka_cluster.ensure_topics("--allow-under-replicated")
    assert accepted.returncode == 0, accepted.stderr
    assert "warning: 1 under-replicated topic(s)" in accepted.stderr


@pytest.fixture
def cluster_stack(kafka_cluster: Cluster, default_routing: None, api_key: str, settings: Any) -> Iterator[Stack]:
    """Web and worker processes whose Kafka is the cluster (KAFKA_BROKERS lists its three nodes)."""
    settings.KAFKA_BROKERS = kafka_cluster.bootstrap.split(",")  # the test's own readers
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    env = FAULT_ENV | {"REDIS_URL": REDIS_URL, "KAFKA_BROKERS": kafka_cluster.bootstrap}
    web = WebServer(workers=2, extra_env=env)
    stack = Stack(web, WorkerProcess(extra_env=env), api_key, client)
    try:
        yield stack
    finally:
        stack.worker.stop()
        stack.web.stop()
        kafka_cluster.services("up")  # a killed node comes back for the next test


def busiest_partition(reader: KafkaReader, topic: str) -> int:
    """The partition of `topic` that got the most records since the reader's start."""
    partitions = [tp for tp in reader.partitions if tp.topic == topic]
    ends = reader.consumer.end_offsets(partitions)
    return max(partitions, key=lambda tp: ends[tp] - reader.start[tp]).partition


def wait_for_new_leader(cluster: Cluster, topic: str, partition: int, old: int, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            leader = cluster.leaders(topic)[partition]
        except Exception:  # the admin client met the dead broker first: ask again
            leader = -1
        if leader not in (-1, old):
            return leader
        time.sleep(0.5)
    return None


def assert_each_destination_once(
    reader: KafkaReader, wanted: set[tuple[str, str]], *, timeout: float, settle: float = 3.0
) -> int:
    """Every (topic, event id) in `wanted` is in Kafka exactly once or (if undeliverable) in the dead-letter
    table, never both; returns how many were dead-lettered."""
    event_ids = {event_id for _, event_id in wanted}
    seen: Counter[tuple[str, str]] = Counter()
    dead: set[tuple[str, str]] = set()
    deadline = time.monotonic() + timeout
    settled: float | None = None
    next_dead_look = 0.0
    while time.monotonic() < (settled or deadline):
        for records in reader.consumer.poll(timeout_ms=500).values():
            for record in records:
                event_id = dict(record.headers or []).get("event_id", b"").decode()
                if event_id in event_ids:
                    seen[(record.topic, event_id)] += 1
        if time.monotonic() > next_dead_look:
            rows = DeadLetter.objects.filter(event_id__in=event_ids).values_list("original_topic", "event_id")
            dead = {(topic, str(event_id)) for topic, event_id in rows}
            next_dead_look = time.monotonic() + 2
        if settled is None and wanted <= set(seen) | dead:
            settled = time.monotonic() + settle
    missing = wanted - set(seen) - dead
    assert not missing, f"{len(missing)} of {len(wanted)} accepted (event, destination) pairs did not arrive in time"
    duplicated = {pair: n for pair, n in seen.items() if n != 1}
    assert not duplicated, f"{len(duplicated)} of {len(wanted)} pairs reached Kafka more than once"
    assert not dead & set(seen), "dead-lettered and delivered too"
    return len(dead & wanted)


def test_leader_broker_killed_and_restarted_under_load(
    cluster_stack: Stack, kafka_cluster: Cluster, settings: Any
) -> None:
    attempts, training = settings.KAFKA_TOPIC_ATTEMPTS, settings.KAFKA_TOPIC_ML_TRAINING
    reader = KafkaReader([attempts, training])
    users = [f"cluster-{n}" for n in range(8)]
    # Quality 5: the seeded rules send each attempt to both topics.
    # Steady, not flat out: each task that was in flight when its leader died is settled afterwards by reading
    # Kafka back (publisher.publishing, in doubt), which costs more the more was written since.
    load = Load(cluster_stack, batch=20, pause=0.1, make_event=lambda: factories.attempt(user_id=random.choice(users)))
    with load:
        time.sleep(5)
        partition = busiest_partition(reader, attempts)
        leader = kafka_cluster.leaders(attempts)[partition]
        os.kill(kafka_cluster.pid(leader), signal.SIGKILL)
        new_leader = wait_for_new_leader(kafka_cluster, attempts, partition, leader, FAILOVER_WINDOW)
        assert new_leader is not None, f"{attempts}[{partition}]: no new leader {FAILOVER_WINDOW:.0f} s after the kill"
        time.sleep(5)  # on two brokers
        kafka_cluster.services("up")  # restarts the killed node; returns once all three are registered
        time.sleep(5)
    # No other status, no connection error and no request left unanswered for 30 s (the client's timeout: 0).
    assert set(load.statuses) <= {202, 429, 503}, load.statuses
    assert load.statuses[202] > 0, load.statuses
    assert load.missing_retry_after == 0
    wanted = {(topic, event_id) for event_id in load.accepted for topic in (attempts, training)}
    try:
        assert_each_destination_once(reader, wanted, timeout=300)
    finally:
        reader.close()
