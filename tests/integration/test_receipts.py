"""Receipts, "where did my event go?": GET /api/v1/events/<id> against the real web server, worker and Kafka, and
the admin's Trace an event screen. Run also with INGEST_FAST_PATHS=none (the suite's second run)."""

from __future__ import annotations

import base64
import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from django.test import Client
from kafka import KafkaConsumer, TopicPartition
from rest_framework_api_key.models import APIKey

from publisher.models import DeadLetter
from tests import factories
from tests.conftest import WebServer, WorkerProcess, create_topic
from tests.integration.test_api import post
from tests.integration.test_delivery_promise import route, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def get_receipt(server: WebServer, event_id: str, key: str) -> requests.Response:
    return requests.get(
        f"{server.url}/api/v1/events/{event_id}", headers={"Authorization": f"Api-Key {key}"}, timeout=30
    )


def status_of(server: WebServer, event_id: str, key: str) -> str:
    response = get_receipt(server, event_id, key)
    assert response.status_code == 200, response.text
    return str(response.json()["status"])


def read_at(topic: str, partition: int, offset: int) -> Any:
    """The record Kafka holds at (topic, partition, offset), read independently of the service."""
    from django.conf import settings

    consumer = KafkaConsumer(bootstrap_servers=settings.KAFKA_BROKERS, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for record in consumer.poll(timeout_ms=500, max_records=1).get(tp, []):
                return record
        raise AssertionError(f"nothing at {topic}[{partition}]@{offset}")
    finally:
        consumer.close()


@pytest.fixture
def paused_worker(celery_worker: WorkerProcess) -> Iterator[Any]:
    """Pause the worker (SIGSTOP to its process group) until the test calls the returned `resume()`."""
    pgid = celery_worker.proc.pid
    stopped = [False]

    def pause() -> None:
        os.killpg(pgid, signal.SIGSTOP)
        stopped[0] = True

    def resume() -> None:
        if stopped[0]:
            os.killpg(pgid, signal.SIGCONT)
            stopped[0] = False

    pause()
    try:
        yield resume
    finally:
        resume()


def test_an_event_is_queued_then_published_where_kafka_has_it(
    default_routing: None, web_server: WebServer, api_key: str, paused_worker: Any
) -> None:
    resume = paused_worker
    event = factories.activity(activity_type="video")
    response = post(web_server, "/api/v1/events", event, api_key)
    assert response.status_code == 202, response.text
    event_id = response.json()["event_id"]

    queued = get_receipt(web_server, event_id, api_key)
    assert queued.status_code == 200, queued.text
    assert queued.json() == {"event_id": event_id, "status": "queued", "deliveries": [], "dead_letters": []}

    resume()
    wait_for(lambda: status_of(web_server, event_id, api_key) == "published", timeout=30, what="published")
    receipt = get_receipt(web_server, event_id, api_key).json()
    assert receipt["dead_letters"] == []
    assert [d["topic"] for d in receipt["deliveries"]] == ["user.activities"]
    [delivery] = receipt["deliveries"]
    record = read_at(delivery["topic"], delivery["partition"], delivery["offset"])
    assert dict(record.headers)["event_id"].decode() == event_id


def test_every_event_of_a_batch_has_its_own_position(
    default_routing: None, celery_worker: WorkerProcess, web_server: WebServer, api_key: str
) -> None:
    events = [factories.activity(), factories.attempt(), factories.activity()]
    response = post(web_server, "/api/v1/events/batch", {"events": events}, api_key)
    assert response.status_code == 202, response.text
    ids = [result["event_id"] for result in response.json()["results"]]
    for event_id in ids:
        wait_for(lambda e=event_id: status_of(web_server, e, api_key) == "published", timeout=30, what="published")
        for delivery in get_receipt(web_server, event_id, api_key).json()["deliveries"]:
            record = read_at(delivery["topic"], delivery["partition"], delivery["offset"])
            assert dict(record.headers)["event_id"].decode() == event_id


def test_receipts_live_in_a_few_expiring_hashes_not_a_key_per_event(
    default_routing: None, celery_worker: WorkerProcess, web_server: WebServer, api_key: str
) -> None:
    from config.redis import get_redis
    from publisher import receipts

    events = [factories.activity() for _ in range(60)]
    response = post(web_server, "/api/v1/events/batch", {"events": events}, api_key)
    assert response.status_code == 202, response.text
    ids = {result["event_id"] for result in response.json()["results"]}
    for event_id in ids:
        wait_for(lambda e=event_id: status_of(web_server, e, api_key) == "published", timeout=30, what="published")

    redis = get_redis()
    holding = {key: redis.hkeys(key) for key in redis.scan_iter(f"{receipts.KEY_PREFIX}*", count=1000)}
    holding = {key: {f.decode() for f in fields} & ids for key, fields in holding.items()}
    holding = {key: fields for key, fields in holding.items() if fields}
    assert set().union(*holding.values()) == ids
    # 60 events, at most one hash per shard in each of the (at most two) buckets admission and publishing wrote.
    assert len(holding) <= 2 * receipts.SHARDS
    for key in holding:
        left = redis.ttl(key)
        assert 0 < left <= receipts.ttl() + receipts.bucket_seconds(), (key, left)


def test_a_receipt_spanning_buckets_reads_whole(web_server: WebServer, api_key: str) -> None:
    """An event queued long before it was published (a Kafka outage, say): its header is in an older bucket
    than its deliveries."""
    from publisher import receipts

    event_id = str(uuid.uuid4())
    owner = api_key.partition(".")[0]
    receipts.stamp_queued(event_ids=[event_id], owner=owner, accepted_at=time.time() - 3 * receipts.bucket_seconds())
    assert status_of(web_server, event_id, api_key) == "queued"
    receipts.note_deliveries(events=[{"event_id": event_id}], delivered=[(0, "user.activities", (2, 41))], finished=[0])
    assert get_receipt(web_server, event_id, api_key).json() == {
        "event_id": event_id,
        "status": "published",
        "deliveries": [{"topic": "user.activities", "partition": 2, "offset": 41}],
        "dead_letters": [],
    }
    receipts.forget(event_ids=[event_id], accepted_at=time.time() - 3 * receipts.bucket_seconds())
    assert get_receipt(web_server, event_id, api_key).status_code == 404


def test_another_api_key_gets_404_exactly_as_for_an_unknown_event(
    default_routing: None, celery_worker: WorkerProcess, web_server: WebServer, api_key: str
) -> None:
    _, other_key = APIKey.objects.create_key(name=f"test-other-{uuid.uuid4().hex[:6]}")
    event_id = post(web_server, "/api/v1/events", factories.activity(), api_key).json()["event_id"]
    assert get_receipt(web_server, event_id, api_key).status_code == 200

    theirs = get_receipt(web_server, event_id, other_key)
    unknown = get_receipt(web_server, str(uuid.uuid4()), api_key)
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json() == unknown.json()
    assert "No such event for this API key" in theirs.json()["error"]

    malformed = get_receipt(web_server, "not-a-uuid", api_key)
    assert malformed.status_code == 400
    assert "is not a UUID" in malformed.json()["error"]
    assert requests.get(f"{web_server.url}/api/v1/events/{event_id}", timeout=30).status_code == 401
    # The id as the client may have written it (upper case) is the same event.
    assert get_receipt(web_server, event_id.upper(), api_key).status_code == 200


def test_a_duplicate_sent_under_its_own_id_names_the_original(
    default_routing: None, celery_worker: WorkerProcess, web_server: WebServer, api_key: str
) -> None:
    first_id, second_id = str(uuid.uuid4()), str(uuid.uuid4())
    attempt = factories.attempt()
    first = post(web_server, "/api/v1/events", attempt | {"event_id": first_id}, api_key).json()
    again = post(web_server, "/api/v1/events", attempt | {"event_id": second_id}, api_key).json()
    assert first == {"event_id": first_id, "status": "accepted"}
    assert again == {"event_id": first_id, "status": "duplicate"}

    receipt = get_receipt(web_server, second_id, api_key)
    assert receipt.status_code == 200, receipt.text
    assert receipt.json() == {
        "event_id": second_id,
        "status": "duplicate",
        "duplicate_of": first_id,
        "deliveries": [],
        "dead_letters": [],
    }
    # Resending the original (same id) changes nothing of its receipt.
    post(web_server, "/api/v1/events", attempt | {"event_id": first_id}, api_key)
    wait_for(lambda: status_of(web_server, first_id, api_key) == "published", timeout=30, what="original published")

    # Another producer sending the same attempt is told the original's id, and may then read its receipt; a
    # third, who was not, may not.
    _, second_key = APIKey.objects.create_key(name=f"test-second-{uuid.uuid4().hex[:6]}")
    _, third_key = APIKey.objects.create_key(name=f"test-third-{uuid.uuid4().hex[:6]}")
    assert get_receipt(web_server, first_id, second_key).status_code == 404
    assert post(web_server, "/api/v1/events", attempt, second_key).json() == {
        "event_id": first_id,
        "status": "duplicate",
    }
    assert get_receipt(web_server, first_id, second_key).json() == get_receipt(web_server, first_id, api_key).json()
    assert get_receipt(web_server, first_id, third_key).status_code == 404


def test_a_dead_lettered_event_shows_the_reason_and_the_dead_letter(
    default_routing: None, celery_worker: WorkerProcess, web_server: WebServer, api_key: str
) -> None:
    create_topic("test.small-2000", **{"max.message.bytes": "2000"})
    route("too-big", "test.small-2000")
    time.sleep(2.5)  # a rule reaches running workers within 2 s
    blob = base64.b64encode(os.urandom(4500)).decode()  # ~6 KB that no codec compresses under the limit
    event = factories.activity(activity_type="too-big", properties={"blob": blob})
    event_id = post(web_server, "/api/v1/events", event, api_key).json()["event_id"]

    wait_for(lambda: status_of(web_server, event_id, api_key) == "dead_lettered", timeout=60, what="dead-lettered")
    receipt = get_receipt(web_server, event_id, api_key).json()
    row = DeadLetter.objects.get(event_id=event_id, original_topic="test.small-2000")
    assert {"dead_letter_id": row.pk, "topic": "test.small-2000", "reason": "permanent_error"} in receipt[
        "dead_letters"
    ]
    # Its other destination (the seed's rule for every activity) got it: the receipt says where.
    delivered = {d["topic"] for d in receipt["deliveries"]}
    assert delivered == {"user.activities"}


def test_an_event_no_rule_matches_is_unrouted(
    default_routing: None, celery_worker: WorkerProcess, web_server: WebServer, api_key: str
) -> None:
    # The seed routes sessions only when items were attempted.
    event = factories.session(items_attempted=0, items_correct=0)
    event_id = post(web_server, "/api/v1/events", event, api_key).json()["event_id"]
    wait_for(lambda: status_of(web_server, event_id, api_key) == "unrouted", timeout=30, what="unrouted")
    assert get_receipt(web_server, event_id, api_key).json()["deliveries"] == []


def test_the_admin_traces_an_event_by_id_and_by_attempt(
    default_routing: None, celery_worker: WorkerProcess, web_server: WebServer, api_key: str, admin_client: Client
) -> None:
    attempt = factories.attempt()
    event_id = post(web_server, "/api/v1/events", attempt, api_key).json()["event_id"]
    wait_for(lambda: status_of(web_server, event_id, api_key) == "published", timeout=30, what="published")
    deliveries = get_receipt(web_server, event_id, api_key).json()["deliveries"]
    assert deliveries

    by_id = admin_client.get("/admin/publisher/deadletter/trace/", {"event_id": event_id})
    assert by_id.status_code == 200
    page = by_id.content.decode()
    assert f"Event {event_id}" in page
    for d in deliveries:
        assert f"<td>{d['topic']}</td><td>{d['partition']}</td><td>{d['offset']}</td>" in page
    assert "Rules matching it now:" in page and attempt["client_attempt_id"] in page  # read back from Kafka

    by_attempt = admin_client.get(
        "/admin/publisher/deadletter/trace/",
        {"user_id": attempt["user_id"], "client_attempt_id": attempt["client_attempt_id"]},
    )
    assert f"Event {event_id}" in by_attempt.content.decode()
    assert "Trace an event" in admin_client.get("/admin/").content.decode()


def test_openapi_documents_the_receipt(web_server: WebServer) -> None:
    spec = requests.get(f"{web_server.url}/api/schema/?format=json", timeout=10).json()
    operation = spec["paths"]["/api/v1/events/{event_id}"]["get"]
    assert {"200", "400", "401", "404"} <= set(operation["responses"])
    [parameter] = operation["parameters"]
    assert parameter["name"] == "event_id" and parameter["schema"]["format"] == "uuid"
    schemas = spec["components"]["schemas"]

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        ref = node.get("$ref") or next((n["$ref"] for n in node.get("allOf", []) if "$ref" in n), None)
        return resolve(schemas[ref.rsplit("/", 1)[1]]) if ref else node

    receipt = resolve(operation["responses"]["200"]["content"]["application/json"]["schema"])["properties"]
    assert set(resolve(receipt["status"])["enum"]) == {"queued", "published", "dead_lettered", "duplicate", "unrouted"}
    assert set(resolve(receipt["deliveries"]["items"])["properties"]) == {"topic", "partition", "offset"}
