"""W3C trace context on the real stack (web and worker processes, Redis, Kafka, PostgreSQL): a request's
traceparent reaches the Kafka records of every destination and the request's and task's log lines, a missing or
malformed one is replaced by a valid new one, grouped requests keep their own, and a dead letter keeps it for its
replay to link to."""

from __future__ import annotations

import base64
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from events import tracecontext
from events.schema import validate_event
from events.tracecontext import parse_traceparent
from ingestion import services as ingestion_services
from publisher import replay, selectors
from publisher.models import DeadLetter
from routing.models import RoutingRule, Topic
from routing.services import invalidate_local_cache
from tests import factories
from tests.conftest import KafkaReader, WebServer, WorkerProcess, create_topic
from tests.integration.test_api import post

pytestmark = pytest.mark.django_db(transaction=True)

TRACEPARENT = "00-{}-{}-01"
TRACESTATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"


def new_traceparent() -> str:
    return TRACEPARENT.format(uuid.uuid4().hex, uuid.uuid4().hex[:16])


@pytest.fixture(scope="module")
def debug_web(django_db_setup: Any, django_db_blocker: Any) -> Iterator[WebServer]:
    """A web server logging at debug level: the event endpoints then log one line per admitted request."""
    server = WebServer(workers=1, extra_env={"LOG_LEVEL": "debug"})
    yield server
    server.stop()


def log_lines(output: Callable[[], str], wanted: Callable[[dict[str, Any]], bool], timeout: float = 20) -> list[Any]:
    """The JSON log lines of a process that `wanted` picks, waiting until there is at least one."""
    deadline = time.monotonic() + timeout
    while True:
        found = []
        for line in output().splitlines():
            if line.startswith("{"):
                try:
                    entry = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if wanted(entry):
                    found.append(entry)
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def names_trace(entry: dict[str, Any], trace_id: str) -> bool:
    return bool(entry.get("trace_id") == trace_id or trace_id in entry.get("trace_ids", ()))


def mine(records: list[Any], event_ids: set[str]) -> list[Any]:
    return [r for r in records if r.headers.get("event_id", b"").decode() in event_ids]


def test_a_requests_traceparent_reaches_every_destination_and_the_logs(
    default_routing: None, celery_worker: WorkerProcess, debug_web: WebServer, api_key: str, kafka_reader: Any
) -> None:
    reader: KafkaReader = kafka_reader("user.attempts", "ml.training_events", "user.sessions")
    traceparent = new_traceparent()
    trace_id = traceparent[3:35]
    events = [factories.attempt(quality=5), factories.session()]  # the attempt goes to two topics

    response = post(
        debug_web, "/api/v1/events/batch", {"events": events}, api_key, traceparent=traceparent, tracestate=TRACESTATE
    )

    assert response.status_code == 202, response.text
    assert response.headers["traceresponse"] == traceparent  # forwarded unchanged
    ids = {r["event_id"] for r in response.json()["results"]}
    records = mine(reader.read(expected=3), ids)
    assert sorted(r.topic for r in records) == ["ml.training_events", "user.attempts", "user.sessions"]
    for record in records:
        assert record.headers["traceparent"] == traceparent.encode()
        assert record.headers["tracestate"] == TRACESTATE.encode()

    admitted = log_lines(
        debug_web.output, lambda e: e.get("event") == "events_admitted" and e.get("trace_id") == trace_id
    )
    assert len(admitted) == 1 and admitted[0]["span_id"] == traceparent[36:52] and admitted[0]["accepted"] == 2
    published = log_lines(celery_worker.output, lambda e: e.get("event") == "publish_done" and names_trace(e, trace_id))
    assert published and published[0]["task_name"] == "publisher.publish_events"


@pytest.mark.parametrize(
    "sent",
    [
        {},
        {"traceparent": "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", "tracestate": TRACESTATE},
        {"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01"},
        {"traceparent": "not a traceparent"},
    ],
    ids=["missing", "uppercase", "zero-trace-id", "garbage"],
)
def test_a_missing_or_malformed_traceparent_is_replaced_by_a_new_valid_one(
    sent: dict[str, str],
    default_routing: None,
    celery_worker: WorkerProcess,
    debug_web: WebServer,
    api_key: str,
    kafka_reader: Any,
) -> None:
    reader: KafkaReader = kafka_reader("user.activities")

    response = post(debug_web, "/api/v1/events", factories.activity(), api_key, **sent)

    assert response.status_code == 202, response.text
    made = parse_traceparent(response.headers["traceresponse"])
    assert made is not None and made.traceparent != sent.get("traceparent")
    [record] = mine(reader.read(expected=1), {response.json()["event_id"]})
    assert record.headers["traceparent"] == made.traceparent.encode()
    assert "tracestate" not in record.headers  # a restarted trace drops the old tracestate
    assert log_lines(
        debug_web.output, lambda e: e.get("event") == "events_admitted" and e.get("trace_id") == made.trace_id
    )


def test_requests_grouped_into_one_task_keep_their_own_trace(
    default_routing: None, celery_worker: WorkerProcess, kafka_reader: Any
) -> None:
    """Two requests admitted as one group (one task, however the queue is reached: the group commit's own step,
    driven here directly so the group is certain): each event's records carry its own request's context."""
    reader: KafkaReader = kafka_reader("user.activities")
    first, _ = tracecontext.from_headers(new_traceparent(), "congo=first")
    second, _ = tracecontext.from_headers(new_traceparent(), None)

    def request(count: int, trace: tracecontext.TraceContext) -> Any:
        checked = [validate_event(factories.activity()) for _ in range(count)]
        valid = [ev for ev in checked if not isinstance(ev, list)]
        return ingestion_services._Request(list(enumerate(valid)), trace)

    group = [request(2, first), request(3, second)]
    outcomes = ingestion_services._admit_group(group, source=f"trace-group-{uuid.uuid4().hex[:6]}")

    expected: dict[str, tracecontext.TraceContext] = {}
    for req, outcome in zip(group, outcomes, strict=True):
        assert outcome.accepted == len(req.events)
        expected.update({event_id: req.trace for event_id, _ in outcome.statuses.values()})
    records = mine(reader.read(expected=5), set(expected))
    assert len(records) == 5
    for record in records:
        trace = expected[record.headers["event_id"].decode()]
        assert record.headers["traceparent"] == trace.traceparent.encode()
        assert record.headers.get("tracestate") == (trace.tracestate.encode() if trace.tracestate else None)
    # The task's line names both traces.
    both = log_lines(
        celery_worker.output,
        lambda e: e.get("event") == "publish_done" and set(e.get("trace_ids", ())) >= {first.trace_id, second.trace_id},
    )
    assert both


def test_a_dead_letter_keeps_the_trace_and_its_replay_links_to_it(
    default_routing: None, celery_worker: WorkerProcess, debug_web: WebServer, api_key: str, kafka_reader: Any
) -> None:
    create_topic("test.trace-small", **{"max.message.bytes": "1024"})
    topic, _ = Topic.objects.get_or_create(name="test.trace-small")
    rule = RoutingRule.objects.create(
        name="test trace too big", event_type="activity", pattern={"activity_type": ["trace-too-big"]}, priority=1
    )
    rule.destinations.set([topic])
    reader: KafkaReader = kafka_reader("dlq.events", "user.activities")
    traceparent = new_traceparent()
    trace_id = traceparent[3:35]
    noise = base64.b64encode(os.urandom(5000)).decode()  # incompressible: over the topic's 1024 bytes
    event = factories.activity(activity_type="trace-too-big", properties={"blob": noise})

    response = post(debug_web, "/api/v1/events", event, api_key, traceparent=traceparent, tracestate=TRACESTATE)
    assert response.status_code == 202, response.text
    event_id = response.json()["event_id"]

    records = mine(reader.read(expected=2), {event_id})
    assert sorted(r.topic for r in records) == ["dlq.events", "user.activities"]
    for record in records:  # the delivered copy and the dead-letter topic's copy
        assert record.headers["traceparent"] == traceparent.encode()
        assert record.headers["tracestate"] == TRACESTATE.encode()
    row = DeadLetter.objects.get(event_id=event_id)
    assert row.trace_id == trace_id
    assert replay.header(row, "traceparent") == traceparent
    assert list(selectors.search(DeadLetter.objects.all(), trace_id)) == [row]
    assert list(selectors.search(DeadLetter.objects.all(), traceparent)) == [row]
    dead_lettered = log_lines(
        celery_worker.output, lambda e: e.get("event") == "dead_letter" and e.get("event_id") == event_id
    )
    assert dead_lettered and dead_lettered[0]["trace_id"] == trace_id

    rule.delete()  # the current rules now send it to user.activities only
    invalidate_local_cache()
    outcome = replay.replay_one(dead_letter_id=row.pk, actor=replay.Actor.command("test"), reroute=True)

    assert outcome.ok, outcome.error
    [replayed] = mine(reader.read(expected=1), {event_id})
    new = parse_traceparent(replayed.headers["traceparent"].decode())
    assert new is not None and new.trace_id != trace_id
    assert new.sampled  # the original was sampled
    assert "tracestate" not in replayed.headers  # it belongs to the original trace
    assert replayed.headers["tracelink"] == traceparent.encode()
    assert replayed.headers["dlq_replay_count"] == b"1"
