"""Two app nodes behind haproxy behave as one service (tests/nodes.py: real web servers, Celery workers and
haproxy with scripts/nodes.sh's configuration, on the suite's PostgreSQL, Redis and Kafka).

Requests go through the load balancer, which names the node that answered (X-Ingest-Node), so each test shows
both nodes taking part: a duplicate across nodes, one rate limit, one queue-depth limit, a rule change both
nodes' workers follow, one breaker, one dead-letter table, a replay job that runs once, and /metrics per node.
Kafka topics are shared with other suites: records are always filtered by this test's event ids."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from django.conf import settings
from django.contrib.auth.models import User

from publisher import breaker, queue
from publisher.models import DeadLetter, ReplayAttempt, ReplayJob
from publisher.replay.jobs import replay_dead_letters
from routing.models import RoutingRule, Topic
from tests import factories
from tests.conftest import KafkaReader, _purge_publish_queue, create_topic
from tests.nodes import Answer, LoadBalancer, Node, post, wait_for

pytestmark = [pytest.mark.multinode, pytest.mark.django_db(transaction=True)]

RATE_LIMIT = 100  # requests per key and minute: small enough to reach, a lease of 1 so it is exact
MAX_QUEUE_DEPTH = 200
CLUSTER_ENV = {
    "INGEST_RATE_LIMIT": f"{RATE_LIMIT}/min",
    "INGEST_MAX_QUEUE_DEPTH": str(MAX_QUEUE_DEPTH),
    "PUBLISHER_BREAKER_RESET_TIMEOUT": "10s",
    "KAFKA_PRODUCER_TIMEOUT": "3s",
}
REROUTED = "test.nodes.rerouted"
TINY = "test.nodes.tiny"  # records over 512 bytes are refused: a permanent error, dead-lettered


class Cluster:
    def __init__(self, nodes: list[Node], lb: LoadBalancer) -> None:
        self.nodes = {n.name: n for n in nodes}
        self.lb = lb

    @property
    def url(self) -> str:
        return self.lb.url

    def stop(self) -> None:
        self.lb.stop()
        for node in self.nodes.values():
            node.stop()


@pytest.fixture(scope="module")
def cluster(
    django_db_setup: Any, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory, celery_worker: Any
) -> Iterator[Cluster]:
    create_topic(REROUTED)
    create_topic(TINY, **{"max.message.bytes": "512"})
    # The suite's own worker reads the same queue: paused for this module, so that only the two nodes' workers
    # take tasks (a test that pauses both nodes' workers must see the queue fill).
    os.killpg(celery_worker.proc.pid, signal.SIGSTOP)
    _purge_publish_queue()
    tmp = tmp_path_factory.mktemp("two-nodes")
    nodes: list[Node] = []
    result: Cluster | None = None
    try:
        for name in ("a", "b"):
            nodes.append(Node.start(name, tmp=tmp, env=CLUSTER_ENV))
        result = Cluster(nodes, LoadBalancer(nodes, tmp=tmp))
        yield result
    finally:
        if result is not None:
            result.stop()
        else:
            for node in nodes:
                node.stop()
        os.killpg(celery_worker.proc.pid, signal.SIGCONT)


@pytest.fixture(autouse=True)
def _closed_breaker() -> Iterator[None]:
    breaker.reset()
    yield
    breaker.reset()


def send_until_both_nodes(cluster: Cluster, make_body: Any, key: str, *, rounds: int = 20) -> list[Answer]:
    """Posts bodies through the load balancer until each node answered at least one (round robin: two)."""
    answers: list[Answer] = []
    for _ in range(rounds):
        answers.append(post(cluster.url, key, make_body()))
        if {a.node for a in answers} >= set(cluster.nodes):
            break
    return answers


def accepted_ids(answers: list[Answer]) -> list[str]:
    return [
        str(r["event_id"]) for a in answers if a.status == 202 for r in a.body["results"] if r["status"] == "accepted"
    ]


def count_records(reader: KafkaReader, wanted: set[str], *, timeout: float = 60, settle: float = 2.0) -> Counter[str]:
    """How often each wanted event id was written (read until all were seen, then `settle` s more for extras)."""
    seen: Counter[str] = Counter()
    deadline = time.monotonic() + timeout
    settled: float | None = None
    while time.monotonic() < (settled or deadline):
        for records in reader.consumer.poll(timeout_ms=300).values():
            for record in records:
                event_id = dict(record.headers or []).get("event_id", b"").decode()
                if event_id in wanted:
                    seen[event_id] += 1
        if settled is None and wanted <= set(seen):
            settled = time.monotonic() + settle
    return seen


def make_rule(name: str, marker: str, topic: str) -> RoutingRule:
    rule = RoutingRule.objects.create(
        name=name, event_type="activity", pattern={"activity_type": [marker]}, priority=1, stop_processing=True
    )
    rule.destinations.set([Topic.objects.get_or_create(name=topic)[0]])
    return rule


def test_a_duplicate_sent_to_the_other_node_is_answered_duplicate(
    cluster: Cluster, default_routing: None, api_key: str, kafka_reader: Any
) -> None:
    reader = kafka_reader(settings.KAFKA_TOPIC_ATTEMPTS)
    event = factories.attempt(quality=2)  # routed to the attempts topic only
    answers = [post(cluster.url, api_key, {"events": [event]}) for _ in range(4)]
    # Round robin: the same attempt reached both nodes, twice each.
    assert Counter(a.node for a in answers) == Counter(dict.fromkeys(cluster.nodes, 2))
    assert [a.status for a in answers] == [202] * 4
    assert [a.body["results"][0]["status"] for a in answers] == ["accepted", "duplicate", "duplicate", "duplicate"]
    event_id = answers[0].body["results"][0]["event_id"]
    assert count_records(reader, {event_id}) == {event_id: 1}


def test_the_rate_limit_is_one_for_both_nodes(cluster: Cluster, default_routing: None, api_key: str) -> None:
    # The limit counts per minute on the clock: start early in a minute so the whole test falls in one.
    if time.time() % 60 > 30:
        time.sleep(60 - time.time() % 60 + 0.5)
    answers = [post(cluster.url, api_key, {"events": [factories.activity()]}) for _ in range(RATE_LIMIT + 10)]
    statuses = Counter((a.node, a.status) for a in answers)
    assert sum(n for (_, status), n in statuses.items() if status == 202) == RATE_LIMIT, statuses
    assert {(node, 429) for node in cluster.nodes} <= set(statuses), statuses  # each node refused the client
    assert set(a.status for a in answers) == {202, 429}
    assert all(a.retry_after and int(a.retry_after) >= 1 for a in answers if a.status == 429)


def test_the_queue_depth_limit_is_one_for_both_nodes(
    cluster: Cluster, default_routing: None, api_key: str, kafka_reader: Any
) -> None:
    reader = kafka_reader(settings.KAFKA_TOPIC_ACTIVITIES)
    wait_for(lambda: queue.depth(fresh=True) == 0, timeout=60, what="the queue to drain before the test")
    a, b = cluster.nodes.values()
    answers: list[Answer] = []
    with a.worker_paused(), b.worker_paused():
        for _ in range(20):
            answers.append(post(cluster.url, api_key, {"events": [factories.activity() for _ in range(30)]}))
            if {(x.node, x.status) for x in answers} >= {(n, 503) for n in cluster.nodes}:
                break
        accepted = accepted_ids(answers)
        assert {(n, 503) for n in cluster.nodes} <= {(x.node, x.status) for x in answers}
        assert {(n, 202) for n in cluster.nodes} <= {(x.node, x.status) for x in answers}
        # Both nodes filled one queue: together they accepted no more than the limit of one.
        assert MAX_QUEUE_DEPTH - 30 < len(accepted) <= MAX_QUEUE_DEPTH
        assert all(x.retry_after for x in answers if x.status == 503)
    assert count_records(reader, set(accepted)) == Counter(dict.fromkeys(accepted, 1))
    wait_for(lambda: queue.depth(fresh=True) == 0, timeout=60, what="the queue to drain")
    again = send_until_both_nodes(cluster, lambda: {"events": [factories.activity()]}, api_key)
    assert {(x.node, x.status) for x in again} == {(n, 202) for n in cluster.nodes}


def test_a_rule_change_reaches_both_nodes_within_two_seconds(
    cluster: Cluster, default_routing: None, api_key: str, kafka_reader: Any
) -> None:
    old_reader = kafka_reader(settings.KAFKA_TOPIC_ACTIVITIES)
    new_reader = kafka_reader(REROUTED)
    marker = f"nodes-{uuid.uuid4().hex[:8]}"
    old_name, new_name = f"{marker}-v1", f"{marker}-v2"
    rule = make_rule(old_name, marker, settings.KAFKA_TOPIC_ACTIVITIES)
    a, b = cluster.nodes.values()

    def matched(node: Node, name: str) -> float:
        return node.metric("routing_rule_matches_total", rule=name)

    def send_until_both_workers_matched(name: str) -> list[str]:
        """Events through the load balancer until each node's worker routed some by the rule named `name`."""
        ids: list[str] = []
        for _ in range(30):
            batch = {"events": [factories.activity(activity_type=marker) for _ in range(10)]}
            ids += accepted_ids(send_until_both_nodes(cluster, lambda b=batch: b, api_key, rounds=1))
            time.sleep(0.5)
            if matched(a, name) > 0 and matched(b, name) > 0:
                break
        return ids

    # Both nodes' workers route by the rule as it is (so each holds it in its cache).
    before = send_until_both_workers_matched(old_name)
    assert matched(a, old_name) > 0 and matched(b, old_name) > 0
    assert count_records(old_reader, set(before)) == Counter(dict.fromkeys(before, 1))

    rule.name = new_name
    rule.save()
    rule.destinations.set([Topic.objects.get_or_create(name=REROUTED)[0]])
    time.sleep(2.0)  # the bound: from here on every event is routed by the new rule, whichever node runs it
    after = send_until_both_workers_matched(new_name)
    assert matched(a, new_name) > 0 and matched(b, new_name) > 0
    assert count_records(new_reader, set(after)) == Counter(dict.fromkeys(after, 1))
    assert not set(count_records(old_reader, set(after), timeout=2))


def test_the_breaker_is_one_for_both_nodes(
    cluster: Cluster, default_routing: None, api_key: str, kafka_reader: Any
) -> None:
    reader = kafka_reader(settings.KAFKA_TOPIC_ACTIVITIES)
    a, b = cluster.nodes.values()
    deferred_before = {n.name: n.metric("publisher_events_deferred_total") for n in (a, b)}
    breaker.force_open()  # as one worker's failures would: the state lives in Redis
    wait_for(
        lambda: all(n.metric("publisher_circuit_breaker_state") == 2 for n in (a, b)),
        timeout=10, what="both nodes to report the breaker open",
    )  # fmt: skip

    def unhealthy(node: Node) -> bool:
        health = requests.get(f"{node.web.url}/metrics/publisher/health", timeout=10)
        return health.status_code == 503 and health.json()["checks"]["breaker"]["status"] == "unhealthy"

    # (each node caches its health probes for a moment)
    wait_for(lambda: unhealthy(a) and unhealthy(b), timeout=10, what="both nodes' health to say the breaker is open")

    # Both nodes still accept (the load balancer keeps a node whose pipeline is unhealthy), and each node's
    # worker defers what it takes instead of publishing it.
    accepted: list[str] = []
    for _ in range(30):
        if breaker.current_state() != "open":
            breaker.force_open()  # a trial round closed it: keep it open until both workers deferred
        accepted += accepted_ids(send_until_both_nodes(cluster, lambda: {"events": [factories.activity()]}, api_key))
        time.sleep(0.5)
        if all(n.metric("publisher_events_deferred_total") > deferred_before[n.name] for n in (a, b)):
            break
    assert all(n.metric("publisher_events_deferred_total") > deferred_before[n.name] for n in (a, b))

    # After the reset timeout one trial round closes it for everyone, and what was deferred is delivered once.
    wait_for(lambda: breaker.current_state() == "closed", timeout=60, what="the breaker to close")
    assert count_records(reader, set(accepted), timeout=90) == Counter(dict.fromkeys(accepted, 1))
    wait_for(
        lambda: all(n.metric("publisher_circuit_breaker_state") == 0 for n in (a, b)),
        timeout=10, what="both nodes to report the breaker closed",
    )  # fmt: skip


def _admin_session(url: str) -> requests.Session:
    """An admin logged in through the load balancer (the session lives in the shared database)."""
    password = uuid.uuid4().hex
    User.objects.create_superuser(f"admin-{uuid.uuid4().hex[:6]}", "admin@example.com", password)
    session = requests.Session()
    session.get(f"{url}/admin/login/", timeout=10)
    username = User.objects.latest("id").username
    response = session.post(
        f"{url}/admin/login/",
        data={"username": username, "password": password, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
        timeout=10,
        allow_redirects=False,
    )
    assert response.status_code == 302, response.text[:500]
    return session


def test_dead_letters_share_one_table_and_a_replay_job_runs_once(
    cluster: Cluster, default_routing: None, api_key: str, kafka_reader: Any
) -> None:
    marker = f"nodes-{uuid.uuid4().hex[:8]}"
    rule = make_rule(marker, marker, TINY)
    time.sleep(2.0)  # the new rule reaches every worker
    a, b = cluster.nodes.values()

    def too_big() -> dict[str, Any]:
        return {"events": [factories.activity(activity_type=marker, properties={"blob": "x" * 2000})]}

    answers = [post(cluster.url, api_key, too_big()) for _ in range(6)]
    assert Counter(x.node for x in answers) == Counter(dict.fromkeys(cluster.nodes, 3))
    ids = accepted_ids(answers)
    assert len(ids) == 6
    wait_for(
        lambda: DeadLetter.objects.filter(event_id__in=ids).count() == 6, timeout=90, what="six dead letters"
    )  # fmt: skip
    rows = DeadLetter.objects.filter(event_id__in=ids)
    assert {(str(r.event_id), r.original_topic, r.reason) for r in rows} == {
        (i, TINY, DeadLetter.Reason.PERMANENT_ERROR) for i in ids
    }
    # Each node's /metrics counts the one table's pending entries.
    wait_for(
        lambda: a.metric("dlq_pending_entries") == b.metric("dlq_pending_entries") == 6,
        timeout=15, what="both nodes to report six pending dead letters",
    )  # fmt: skip

    # An operator re-routes them to a topic that takes them and replays by filter, logged in through the load
    # balancer: the login, the form and its answer may each come from another node.
    rule.destinations.set([Topic.objects.get_or_create(name=REROUTED)[0]])
    reader = kafka_reader(REROUTED)
    time.sleep(2.0)
    admin = _admin_session(cluster.url)
    form_url = f"{cluster.url}/admin/publisher/deadletter/replay-by-filter/"
    page = admin.get(form_url, timeout=10)
    assert page.status_code == 200
    csrf = admin.cookies["csrftoken"]
    response = admin.post(
        form_url,
        data={"topic": TINY, "rate": "50", "reroute": "on", "_start": "1", "csrfmiddlewaretoken": csrf},
        timeout=10,
        allow_redirects=False,
    )  # fmt: skip
    assert response.status_code == 302, response.text[:500]
    job = ReplayJob.objects.get()
    # The job's task handed to a worker a second time, as Celery does when it redelivers a task.
    replay_dead_letters.apply_async(kwargs={"job_id": job.pk, "token": job.run_token})
    wait_for(lambda: ReplayJob.objects.get(pk=job.pk).status == "finished", timeout=60, what="the job to finish")

    assert count_records(reader, set(ids)) == Counter(dict.fromkeys(ids, 1))
    assert set(DeadLetter.objects.filter(event_id__in=ids).values_list("status", flat=True)) == {"replayed"}
    assert Counter(str(x.dead_letter.event_id) for x in ReplayAttempt.objects.select_related("dead_letter")) == Counter(
        dict.fromkeys(ids, 1)
    )
    job.refresh_from_db()
    assert (job.total, job.replayed, job.failed) == (6, 6, 0)


def test_metrics_are_per_node_and_add_up_to_what_was_accepted(
    cluster: Cluster, default_routing: None, api_key: str
) -> None:
    a, b = cluster.nodes.values()
    before = {n.name: n.metric("ingestion_events_accepted_total") for n in (a, b)}
    answers = [post(cluster.url, api_key, {"events": [factories.activity() for _ in range(3)]}) for _ in range(20)]
    by_node = Counter[str]()
    for answer in answers:
        assert answer.status == 202
        by_node[answer.node] += answer.body["accepted"]
    assert set(by_node) == set(cluster.nodes)

    def delta(node: Node) -> float:
        return node.metric("ingestion_events_accepted_total") - before[node.name]

    # Each node counts exactly what it accepted, so what Prometheus sums over both is what the clients got.
    assert {n.name: delta(n) for n in (a, b)} == by_node
    assert delta(a) + delta(b) == 60
    # Each node's files are its own: its directory holds only its processes.
    assert not {p.name for p in a.multiproc_dir.iterdir()} & {p.name for p in b.multiproc_dir.iterdir()}
