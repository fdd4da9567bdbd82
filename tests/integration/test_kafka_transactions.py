"""Exactly once for read_committed consumers (KAFKA_TRANSACTIONS=true), on the real stack: each publish round is
one Kafka transaction across its destination topics, a worker slot's transactional id fences a dead predecessor,
and looking for what a dead run wrote counts only what was committed."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import redis
import requests
from django.conf import settings
from django.test import override_settings
from kafka import KafkaProducer

from events.schema import validate_event
from publisher import kafka_gateway, publishing
from publisher.models import DeadLetter, RetryPolicy
from routing.models import RoutingRule, Topic
from tests import factories
from tests.cluster import Cluster
from tests.conftest import KafkaReader, WebServer, WorkerProcess

pytestmark = [pytest.mark.multinode, pytest.mark.django_db(transaction=True)]

ATTEMPTS = "user.attempts"
ML = "ml.training_events"
# The stack's own Redis database, so that the suite's shared worker (no transactions) never takes its tasks. The
# fault suite uses the same one, one test at a time; TEST_STACK_REDIS_URL picks another when suites run side by side.
STACK_REDIS_URL = os.environ.get("TEST_STACK_REDIS_URL") or settings.REDIS_URL.rsplit("/", 1)[0] + "/9"


@pytest.fixture(scope="module")
def kafka_brokers(kafka_cluster: Cluster) -> list[str]:
    """The Kafka cluster these tests run against (three brokers, topics with RF 3 and min.insync.replicas 2): the
    stack, this process and the readers all take it from here."""
    return kafka_cluster.bootstrap.split(",")


@pytest.fixture
def id_prefix() -> str:
    """Transactional ids of this test's own: runs sharing the broker must not fence each other."""
    return f"test-{os.environ.get('TEST_DB_SUFFIX', 'suite')}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def transactions_here(kafka_brokers: list[str], id_prefix: str) -> Iterator[None]:
    """This test process publishing with KAFKA_TRANSACTIONS on, with producers of its own."""
    kafka_gateway.close_producer(timeout=5)
    with override_settings(
        KAFKA_TRANSACTIONS=True,
        KAFKA_BROKERS=kafka_brokers,
        KAFKA_TRANSACTIONAL_ID_PREFIX=id_prefix,
        KAFKA_PRODUCER_TIMEOUT=3.0,
    ):
        try:
            yield
        finally:
            kafka_gateway.close_producer(timeout=5)


def committed_reader(brokers: list[str], *topics: str) -> KafkaReader:
    return KafkaReader(list(topics), brokers=brokers, isolation_level="read_committed")


def count_records(
    reader: KafkaReader, wanted: set[tuple[str, str]], *, timeout: float, settle: float = 3.0
) -> Counter[tuple[str, str]]:
    """(event_id, topic) pairs read, counted, for the event ids among `wanted`: read until every wanted pair was
    seen (or timeout), then `settle` seconds more so that a duplicate is counted too."""
    ids = {event_id for event_id, _ in wanted}
    seen: Counter[tuple[str, str]] = Counter()
    deadline = time.monotonic() + timeout
    settled: float | None = None
    while time.monotonic() < (settled or deadline):
        for records in reader.consumer.poll(timeout_ms=500).values():
            for record in records:
                event_id = dict(record.headers or []).get("event_id", b"").decode()
                if event_id in ids:
                    seen[(event_id, record.topic)] += 1
        if settled is None and wanted <= set(seen):
            settled = time.monotonic() + settle
    return seen


def assert_each_once(seen: Counter[tuple[str, str]], wanted: set[tuple[str, str]]) -> None:
    assert wanted, "nothing was accepted"
    missing = wanted - set(seen)
    assert not missing, f"{len(missing)} of {len(wanted)} deliveries never committed, e.g. {sorted(missing)[:3]}"
    unexpected = set(seen) - wanted
    assert not unexpected, f"deliveries to topics the rules do not name: {sorted(unexpected)[:3]}"
    duplicated = {pair: n for pair, n in seen.items() if n != 1}
    assert not duplicated, f"{len(duplicated)} of {len(wanted)} deliveries committed more than once"


def normalized(event: dict[str, Any]) -> dict[str, Any]:
    checked = validate_event(event)
    assert not isinstance(checked, list), checked
    return dict(checked.data)


def listed_transactions(brokers: list[str], prefix: str) -> dict[str, Any]:
    """The cluster's transactional ids that start with `prefix`, with their description."""
    admin = kafka_gateway.admin_client(bootstrap_servers=brokers)
    try:
        ids = [
            listing.transactional_id
            for listings in admin.list_transactions().values()
            for listing in listings
            if listing.transactional_id.startswith(prefix + ".")
        ]
        return dict(admin.describe_transactions(ids)) if ids else {}
    finally:
        admin.close()


# ---------------------------------------------------------------- the real stack


@dataclass
class Stack:
    web: WebServer
    worker: WorkerProcess
    key: str
    brokers: list[str]
    prefix: str


@pytest.fixture
def stack(default_routing: None, api_key: str, kafka_brokers: list[str], id_prefix: str) -> Iterator[Stack]:
    redis.Redis.from_url(STACK_REDIS_URL).flushdb()
    env = {
        "REDIS_URL": STACK_REDIS_URL,
        "KAFKA_BROKERS": ",".join(kafka_brokers),
        "KAFKA_TRANSACTIONS": "true",
        "KAFKA_TRANSACTIONAL_ID_PREFIX": id_prefix,
        "KAFKA_PRODUCER_TIMEOUT": "3s",
        "PUBLISHER_BREAKER_RESET_TIMEOUT": "5s",
        "CELERY_VISIBILITY_TIMEOUT": "60",
        "INGEST_KEY_CACHE_SECONDS": "120s",
    }
    web = WebServer(workers=2, extra_env=env)
    try:
        worker = WorkerProcess(extra_env=env)
    except BaseException:
        web.stop()
        raise
    try:
        yield Stack(web, worker, api_key, kafka_brokers, id_prefix)
    finally:
        worker.stop()
        web.stop()


@dataclass
class AttemptLoad:
    """Posts batches of attempts in a loop, every other one good enough for ML training (two destinations);
    remembers the (event_id, topic) pairs the rules promise for what was answered accepted."""

    stack: Stack
    batch: int = 20
    pause: float = 0.0
    wanted: set[tuple[str, str]] = field(default_factory=set)
    statuses: Counter[int] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> AttemptLoad:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        session = requests.Session()
        headers = {"Content-Type": "application/json", "Authorization": f"Api-Key {self.stack.key}"}
        while not self._stop.is_set():
            events = [factories.attempt(quality=5 if n % 2 else 1) for n in range(self.batch)]
            try:
                response = session.post(
                    f"{self.stack.web.url}/api/v1/events/batch",
                    data=orjson.dumps({"events": events}),
                    headers=headers,
                    timeout=30,
                )
            except requests.RequestException:
                self.statuses[0] += 1
                continue
            self.statuses[response.status_code] += 1
            if response.status_code == 202:
                for event, result in zip(events, response.json()["results"], strict=True):
                    if result["status"] == "accepted":
                        self.wanted.add((result["event_id"], ATTEMPTS))
                        if event["quality"] >= 4:
                            self.wanted.add((result["event_id"], ML))
            time.sleep(self.pause)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)


def pool_processes(worker: WorkerProcess) -> list[int]:
    import subprocess

    out = subprocess.run(["pgrep", "-P", str(worker.proc.pid)], capture_output=True, text=True)
    return [int(pid) for pid in out.stdout.split()]


def test_an_attempt_routed_to_two_topics_is_committed_to_both(stack: Stack) -> None:
    reader = committed_reader(stack.brokers, ATTEMPTS, ML)
    try:
        with AttemptLoad(stack, batch=20, pause=0.05) as load:
            time.sleep(4)
        assert load.statuses[500] == 0, load.statuses
        assert any(topic == ML for _, topic in load.wanted)
        assert_each_once(count_records(reader, load.wanted, timeout=60), load.wanted)
    finally:
        reader.close()
    # They went through transactions of the worker's slots, and the last one of each committed.
    slots = listed_transactions(stack.brokers, stack.prefix)
    assert slots, "the broker knows no transactional id of this worker"
    assert all(re.fullmatch(rf"{re.escape(stack.prefix)}\..+@.+\.[01]", tid) for tid in slots), sorted(slots)
    assert {str(d.state.value) for d in slots.values()} <= {"CompleteCommit", "Ongoing", "Empty"}


@pytest.mark.slow
def test_workers_killed_mid_publish_leave_every_delivery_committed_once(stack: Stack) -> None:
    reader = committed_reader(stack.brokers, ATTEMPTS, ML)
    try:
        with AttemptLoad(stack, batch=50) as load:
            for _ in range(3):
                time.sleep(2.5)
                for pid in pool_processes(stack.worker):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(2)
        assert load.statuses[500] == 0, load.statuses
        # Every redelivered task is done within the visibility timeout at the latest; the transaction timeout
        # ends what a killed process left open even if its slot never came back.
        assert_each_once(count_records(reader, load.wanted, timeout=150, settle=5), load.wanted)
    finally:
        reader.close()
    # A replacement pool process takes its predecessor's slot, so its id: two ids for two slots, each initialised
    # again after a kill (a new epoch, which fences the dead predecessor's). How many times depends on whether a
    # replacement lived long enough to initialise before the next kill, so only "again" is certain.
    slots = listed_transactions(stack.brokers, stack.prefix)
    assert len(slots) == 2, sorted(slots)
    assert all(description.producer_epoch >= 1 for description in slots.values()), slots
    restarts = re.findall(r"kafka transactional producer (\S+) ready", stack.worker.output())
    assert set(restarts) == set(slots) and len(restarts) > len(slots), restarts


# ---------------------------------------------------------------- this process publishing


def test_a_fenced_predecessor_cannot_commit(transactions_here: None, kafka_brokers: list[str]) -> None:
    """A process that went quiet mid-round (a stalled, not a dead, worker) while its slot was taken over: its
    commit is refused and what it wrote never reaches a read_committed consumer."""
    reader = committed_reader(kafka_brokers, ATTEMPTS)
    everything = KafkaReader([ATTEMPTS], brokers=kafka_brokers)
    stale_id, fresh_id = uuid.uuid4().hex, uuid.uuid4().hex
    try:
        predecessor = kafka_gateway.transactional_producer()
        predecessor.begin_transaction()
        predecessor.send(ATTEMPTS, key=b"u", value=b"{}", headers=[("event_id", stale_id.encode())])
        predecessor.flush(timeout=10)
        successor = KafkaProducer(**kafka_gateway.producer_config(transactional_id=kafka_gateway.transactional_id()))
        try:
            successor.init_transactions()
            error = kafka_gateway.end_transaction(predecessor, commit=True, timeout=10)
            assert error is not None, "the fenced producer committed"
            successor.begin_transaction()
            successor.send(ATTEMPTS, key=b"u", value=b"{}", headers=[("event_id", fresh_id.encode())])
            assert kafka_gateway.end_transaction(successor, commit=True, timeout=10) is None
        finally:
            successor.close(timeout=5)
        committed = count_records(reader, {(fresh_id, ATTEMPTS), (stale_id, ATTEMPTS)}, timeout=10, settle=1)
        assert committed == Counter({(fresh_id, ATTEMPTS): 1})
        written = count_records(everything, {(stale_id, ATTEMPTS)}, timeout=10, settle=0)
        assert written[(stale_id, ATTEMPTS)] == 1, "the fenced producer's record was never written: nothing tested"
    finally:
        reader.close()
        everything.close()


def test_finding_what_was_written_counts_only_committed_records(
    transactions_here: None, kafka_brokers: list[str]
) -> None:
    """A redelivered task reads Kafka for what its dead run wrote: an aborted round's records are not there, and a
    round still open when the look starts counts once it commits."""
    since = time.time()
    aborted_id, late_id = uuid.uuid4().hex, uuid.uuid4().hex
    other = KafkaProducer(**kafka_gateway.producer_config(transactional_id=f"{kafka_gateway.transactional_id()}.other"))
    try:
        other.init_transactions()
        other.begin_transaction()
        other.send(ATTEMPTS, key=b"u", value=b"{}", headers=[("event_id", aborted_id.encode())])
        other.flush(timeout=10)
        assert kafka_gateway.end_transaction(other, commit=False, timeout=10) is None
        other.begin_transaction()
        other.send(ATTEMPTS, key=b"u", value=b"{}", headers=[("event_id", late_id.encode())])
        other.flush(timeout=10)
        commit_later = threading.Timer(3.0, other.commit_transaction)
        commit_later.start()
        found = kafka_gateway.find_written(topics={ATTEMPTS}, since=since, event_ids={aborted_id, late_id})
        commit_later.join()
    finally:
        other.close(timeout=5)
    assert found == {(late_id, ATTEMPTS)}


def test_a_round_that_fails_anywhere_commits_nowhere(
    transactions_here: None, default_routing: None, kafka_brokers: list[str]
) -> None:
    """An attempt for user.attempts and a topic the broker does not have: the record user.attempts acknowledged is
    aborted with the round, so neither destination has the attempt, and both deliveries are dead-lettered."""
    missing = Topic.objects.create(name=f"test.txn-missing-{uuid.uuid4().hex[:6]}")
    rule = RoutingRule.objects.create(name="test missing", event_type="attempt", pattern={}, priority=30)
    rule.destinations.set([missing])
    RetryPolicy.objects.update_or_create(pk=1, defaults={"max_retries": 0})
    publishing._policy_cache = None
    event = normalized(factories.attempt(quality=1))
    committed = committed_reader(kafka_brokers, ATTEMPTS)
    everything = KafkaReader([ATTEMPTS], brokers=kafka_brokers)
    try:
        result = publishing.publish_events(events=[event], source="test", accepted_at=time.time())
        assert (result.published, result.dead_lettered) == (0, 2)
        pair = (event["event_id"], ATTEMPTS)
        assert count_records(committed, {pair}, timeout=5, settle=0) == Counter()
        assert count_records(everything, {pair}, timeout=10, settle=0)[pair] == 1, "never sent: nothing tested"
    finally:
        committed.close()
        everything.close()
    assert set(DeadLetter.objects.filter(event_id=event["event_id"]).values_list("original_topic", flat=True)) == {
        ATTEMPTS,
        missing.name,
    }
