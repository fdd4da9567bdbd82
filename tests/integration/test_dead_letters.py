"""Dead-letter operations on the real stack (PostgreSQL, Redis, Kafka, a real Celery worker): every state
transition of a replay, edit and discard, the double click, permissions, the purge and replay commands, and the
background replay job with progress and cancel.

Kafka topics are shared with other suites: records read back are always filtered by this test's event ids."""

from __future__ import annotations

import importlib
import io
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import orjson
import pytest
from django.apps import apps as django_apps
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Group, Permission, User
from django.core.cache import cache
from django.core.management import call_command
from django.db import connection, connections
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from kafka.errors import KafkaTimeoutError

from events.schema import validate_event
from events.serialization import decode_value
from publisher import breaker, dead_letters, kafka_gateway, replay
from publisher.models import DeadLetter, DeadLetterSettings, ReplayAttempt, ReplayJob
from publisher.publishing import build_records
from publisher.selectors import STATUS_COUNTS_CACHE_KEY
from routing.models import Topic
from routing.services import ROUTING_EDITORS_GROUP, ensure_routing_editors_group, invalidate_local_cache
from tests import factories
from tests.conftest import WorkerProcess

pytestmark = pytest.mark.django_db(transaction=True)

TOPIC = "test.dlq.replay"
PROTO_TOPIC = "test.dlq.replay.proto"
OPERATORS = "DLQ operators"
_operators_migration = importlib.import_module("publisher.migrations.0003_dlq_operators_group")


# ---------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module", autouse=True)
def _topics() -> None:
    kafka_gateway.ensure_topics(names=[TOPIC, PROTO_TOPIC], partitions=1, replication_factor=1)


@pytest.fixture(autouse=True)
def _clean_state() -> Iterator[None]:
    breaker.reset()
    invalidate_local_cache()
    cache.delete(STATUS_COUNTS_CACHE_KEY)
    # Transactional tests flush every table, so the data migration's group is re-created for each test.
    _operators_migration.create_group(django_apps, None)
    yield
    invalidate_local_cache()


def make_dead_letters(
    events: list[dict[str, Any]],
    *,
    topic: str = TOPIC,
    fmt: str = "json",
    error: BaseException | None = None,
    reason: str = DeadLetter.Reason.RETRIES_EXHAUSTED,
) -> list[DeadLetter]:
    """Dead-letter events the way the pipeline does (publisher.dead_letters.record), after validation."""
    normalized = []
    for raw in events:
        checked = validate_event(raw)
        assert not isinstance(checked, list), checked
        normalized.append(checked.data)
    records, broken = build_records(
        normalized,
        {i: [topic] for i in range(len(normalized))},
        {topic: fmt},
        source="dlq-tests",
        accepted_at=time.time(),
    )
    assert not broken
    for record in records:
        record.attempts = 4
        record.error = error or KafkaTimeoutError("Batch for TopicPartition expired after 10000 ms")
    dead_letters.record(events=normalized, failures=[(r, reason) for r in records], source="dlq-tests")
    ids = [e["event_id"] for e in normalized]
    rows = {str(row.event_id): row for row in DeadLetter.objects.filter(event_id__in=ids, original_topic=topic)}
    return [rows[i] for i in ids]


def make_dead_letter(event: dict[str, Any] | None = None, **kwargs: Any) -> DeadLetter:
    return make_dead_letters([event or factories.activity()], **kwargs)[0]


def make_user(name: str, *, groups: tuple[str, ...] = (), superuser: bool = False) -> User:
    user = User.objects.create_user(name, password="pw-" + uuid.uuid4().hex, is_staff=True, is_superuser=superuser)
    for group_name in groups:
        user.groups.add(Group.objects.get_or_create(name=group_name)[0])
    return User.objects.get(pk=user.pk)  # fresh: no cached permissions


def operator() -> User:
    return make_user("operator-" + uuid.uuid4().hex[:6], groups=(OPERATORS,))


def actor(user: User | None = None) -> replay.Actor:
    return replay.Actor.for_user(user or operator(), via="admin")


def records_for(
    reader: Any, event_ids: list[str], *, expected: int | None = None, settle: float = 1.0, timeout: float = 20.0
) -> list[Any]:
    """Our records among everything written to the reader's topics since it was created (replays return only
    after the broker's ack, so they are there already); then `settle` seconds more to catch duplicates."""
    wanted = {i.encode() for i in event_ids}
    expected = len(event_ids) if expected is None else expected
    mine: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(mine) < expected and time.monotonic() < deadline:
        mine += [r for r in reader.read(expected=1, timeout=0.5, settle=0) if r.headers.get("event_id") in wanted]
    if settle:
        mine += [r for r in reader.read(expected=10**9, timeout=settle) if r.headers.get("event_id") in wanted]
    return mine


def change_url(row: DeadLetter, suffix: str = "change") -> str:
    return reverse(f"admin:publisher_deadletter_{suffix}", args=[row.pk])


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


# ---------------------------------------------------------------------------------------------- replay


def test_replay_pending_to_replayed_publishes_to_the_original_topic(kafka_reader: Any) -> None:
    row = make_dead_letter()
    user = operator()
    reader = kafka_reader(TOPIC)

    outcome = replay.replay_one(dead_letter_id=row.pk, actor=actor(user))

    assert outcome.result is replay.ReplayResult.REPLAYED
    assert outcome.topics == (TOPIC,)
    row.refresh_from_db()
    assert row.status == DeadLetter.Status.REPLAYED
    assert row.replay_count == 1
    assert row.replayed_by == user
    assert row.replayed_at is not None
    assert row.delivered_topics == [TOPIC]
    attempt = ReplayAttempt.objects.get(dead_letter=row)
    assert (attempt.result, attempt.user, attempt.topics, attempt.via) == ("replayed", user, [TOPIC], "admin")
    [record] = records_for(reader, [str(row.event_id)])
    assert record.key == row.user_id.encode()
    assert orjson.loads(record.value) == row.payload
    assert record.headers["content-type"] == b"application/json"
    assert record.headers["schema"] == b"ingestion.v1.ActivityEvent"
    assert record.headers["dlq_replay_count"] == b"1"
    assert record.headers["source"] == b"dlq-tests"
    # The original ingestion time travels with the replayed record.
    assert record.headers["ingested_at"].decode() == replay.header(row, "ingested_at")

    again = replay.replay_one(dead_letter_id=row.pk, actor=actor(user))
    assert again.result is replay.ReplayResult.SKIPPED
    assert "already replayed" in again.error


def test_replay_serializes_in_the_topics_format(kafka_reader: Any, admin_client: Client) -> None:
    Topic.objects.create(name=PROTO_TOPIC, format=Topic.Format.PROTOBUF)
    invalidate_local_cache()
    row = make_dead_letter(factories.attempt(quality=3), topic=PROTO_TOPIC, fmt="protobuf")
    assert row.format == "protobuf"
    # The detail page decodes the stored protobuf value with the row's content-type and schema headers.
    page = admin_client.get(change_url(row)).content.decode()
    assert "application/x-protobuf" in page
    assert row.payload["client_attempt_id"] in page
    reader = kafka_reader(PROTO_TOPIC)

    assert replay.replay_one(dead_letter_id=row.pk, actor=actor()).ok

    [record] = records_for(reader, [str(row.event_id)])
    assert record.headers["content-type"] == b"application/x-protobuf"
    decoded = decode_value(
        record.value,
        content_type=record.headers["content-type"].decode(),
        schema=record.headers["schema"].decode(),
    )
    assert decoded == row.payload


def test_failed_replay_to_a_missing_topic_stays_pending_with_the_new_error() -> None:
    missing = f"test.dlq.missing-{uuid.uuid4().hex[:8]}"
    row = make_dead_letter(topic=missing)
    started = time.monotonic()

    outcome = replay.replay_one(dead_letter_id=row.pk, actor=actor())

    assert time.monotonic() - started < 5  # a clear error at once, not a metadata timeout
    assert outcome.result is replay.ReplayResult.FAILED
    row.refresh_from_db()
    assert row.status == DeadLetter.Status.PENDING
    assert row.replay_count == 1
    assert row.error_class == "UnknownTopic"
    assert missing in row.error_message
    attempt = ReplayAttempt.objects.get(dead_letter=row)
    assert attempt.result == "failed"
    assert attempt.error_class == "UnknownTopic"


def test_failed_replay_of_a_record_too_large_stays_pending() -> None:
    row = make_dead_letter()
    # An operator-sized mistake: a payload far beyond the producer's max request size (1 MiB).
    DeadLetter.objects.filter(pk=row.pk).update(payload=row.payload | {"properties": {"blob": "x" * 1_200_000}})

    outcome = replay.replay_one(dead_letter_id=row.pk, actor=actor())

    assert outcome.result is replay.ReplayResult.FAILED
    row.refresh_from_db()
    assert (row.status, row.replay_count, row.error_class) == ("pending", 1, "MessageSizeTooLargeError")


def test_replay_cap_moves_an_entry_that_keeps_failing_to_quarantined() -> None:
    config = DeadLetterSettings.get_solo()
    config.max_replays = 2
    config.save()
    row = make_dead_letter(topic=f"test.dlq.missing-{uuid.uuid4().hex[:8]}")
    who = actor()

    first = replay.replay_one(dead_letter_id=row.pk, actor=who)
    second = replay.replay_one(dead_letter_id=row.pk, actor=who)

    assert (first.result, second.result) == (replay.ReplayResult.FAILED, replay.ReplayResult.QUARANTINED)
    row.refresh_from_db()
    assert (row.status, row.replay_count) == ("quarantined", 2)
    # Bulk replays leave quarantined entries alone ...
    summary = replay.replay_many(dead_letter_ids=[row.pk], actor=who)
    assert (summary.skipped, summary.replayed, summary.failed) == (1, 0, 0)
    # ... an operator may still retry one explicitly; a failure keeps it quarantined.
    third = replay.replay_one(dead_letter_id=row.pk, actor=who)
    assert third.result is replay.ReplayResult.QUARANTINED
    row.refresh_from_db()
    assert (row.status, row.replay_count) == ("quarantined", 3)
    assert list(ReplayAttempt.objects.filter(dead_letter=row).order_by("at").values_list("result", flat=True)) == [
        "failed",
        "quarantined",
        "quarantined",
    ]


def test_discard_keeps_the_reason_and_who_and_blocks_replay_and_edit() -> None:
    row = make_dead_letter()
    user = operator()

    with pytest.raises(replay.ReplayError):
        replay.discard(dead_letter_ids=[row.pk], actor=actor(user), reason="  ")
    assert replay.discard(dead_letter_ids=[row.pk], actor=actor(user), reason="test traffic from staging") == [row.pk]

    row.refresh_from_db()
    assert row.status == DeadLetter.Status.DISCARDED
    assert row.discard_reason == "test traffic from staging"
    assert row.discarded_by == user
    assert row.discarded_at is not None
    assert replay.replay_one(dead_letter_id=row.pk, actor=actor(user)).result is replay.ReplayResult.SKIPPED
    with pytest.raises(replay.StateConflict):
        replay.edit_payload(dead_letter_id=row.pk, payload=row.payload, actor=actor(user))
    assert replay.discard(dead_letter_ids=[row.pk], actor=actor(user), reason="again") == []


def test_edit_validates_keeps_the_original_payload_and_replay_publishes_the_edit(kafka_reader: Any) -> None:
    row = make_dead_letter(factories.attempt(quality=2))
    original = dict(row.payload)
    who = actor()

    with pytest.raises(replay.PayloadInvalid) as invalid:
        replay.edit_payload(
            dead_letter_id=row.pk, payload=original | {"quality": 9, "correct": "yes", "bogus": 1}, actor=who
        )
    assert {e.path for e in invalid.value.errors} == {"quality", "correct", "bogus"}
    with pytest.raises(replay.PayloadInvalid) as wrong_id:
        replay.edit_payload(dead_letter_id=row.pk, payload=original | {"event_id": str(uuid.uuid4())}, actor=who)
    assert [e.path for e in wrong_id.value.errors] == ["event_id"]
    row.refresh_from_db()
    assert row.payload == original and row.original_payload is None

    replay.edit_payload(dead_letter_id=row.pk, payload=original | {"quality": 4}, actor=who)
    replay.edit_payload(dead_letter_id=row.pk, payload=original | {"quality": 5}, actor=who)

    row.refresh_from_db()
    assert row.payload["quality"] == 5
    assert row.original_payload == original  # the first edit's "before", kept through later edits
    assert row.edited_by == who.user
    reader = kafka_reader(TOPIC)
    assert replay.replay_one(dead_letter_id=row.pk, actor=who).ok
    [record] = records_for(reader, [str(row.event_id)])
    assert orjson.loads(record.value)["quality"] == 5


def test_reroute_publishes_where_the_current_rules_send_the_event(default_routing: None, kafka_reader: Any) -> None:
    row = make_dead_letter(factories.attempt(quality=5), topic="user.attempts")
    reader = kafka_reader("user.attempts", "ml.training_events")

    outcome = replay.replay_one(dead_letter_id=row.pk, actor=actor(), reroute=True)

    assert outcome.ok
    assert set(outcome.topics) == {"user.attempts", "ml.training_events"}
    records = records_for(reader, [str(row.event_id)], expected=2)
    assert sorted(r.topic for r in records) == ["ml.training_events", "user.attempts"]
    row.refresh_from_db()
    assert sorted(row.delivered_topics) == ["ml.training_events", "user.attempts"]
    assert ReplayAttempt.objects.get(dead_letter=row).rerouted

    # An event no rule matches any more is a failed replay, not a silent success.
    unrouted = make_dead_letter(factories.placement(completed=False), topic="user.placements")
    failed = replay.replay_one(dead_letter_id=unrouted.pk, actor=actor(), reroute=True)
    assert failed.result is replay.ReplayResult.FAILED
    unrouted.refresh_from_db()
    assert (unrouted.status, unrouted.error_class) == ("pending", "Unrouted")


def test_double_click_publishes_exactly_once(kafka_reader: Any) -> None:
    row = make_dead_letter()
    who = actor()
    reader = kafka_reader(TOPIC)
    clicks = 4
    barrier = threading.Barrier(clicks)
    outcomes: list[replay.ReplayOutcome] = []
    errors: list[BaseException] = []

    def click() -> None:
        try:
            barrier.wait()
            outcomes.append(replay.replay_one(dead_letter_id=row.pk, actor=who, expected_replay_count=0))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=click) for _ in range(clicks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert not errors
    assert sorted(o.result for o in outcomes) == ["replayed"] + ["skipped"] * (clicks - 1)
    records = records_for(reader, [str(row.event_id)], settle=3.0)
    assert len(records) == 1
    row.refresh_from_db()
    assert (row.status, row.replay_count) == ("replayed", 1)
    assert ReplayAttempt.objects.filter(dead_letter=row).count() == 1


def test_stale_claims_from_a_crashed_replay_are_given_back() -> None:
    row = make_dead_letter()
    long_ago = timezone.now() - timedelta(hours=1)
    DeadLetter.objects.filter(pk=row.pk).update(status=DeadLetter.Status.REPLAYING, replay_claimed_at=long_ago)

    assert replay.replay_one(dead_letter_id=row.pk, actor=actor()).ok


def test_bulk_replay_paces_and_reports_counts(kafka_reader: Any) -> None:
    rows = make_dead_letters([factories.activity() for _ in range(6)])
    replay.discard(dead_letter_ids=[rows[0].pk], actor=actor(), reason="noise")
    reader = kafka_reader(TOPIC)
    started = time.monotonic()

    summary = replay.replay_many(dead_letter_ids=[r.pk for r in rows], actor=actor(), rate=4)

    elapsed = time.monotonic() - started
    assert (summary.replayed, summary.skipped, summary.failed) == (5, 1, 0)
    assert elapsed >= (5 - replay.chunk_size_for(4)) / 4 - 0.1
    records = records_for(reader, [str(r.event_id) for r in rows[1:]])
    assert len(records) == 5


def test_token_bucket_paces_to_the_rate() -> None:
    clock = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    bucket = replay.TokenBucket(10, clock=lambda: clock[0], sleep=sleep)
    for _ in range(5):
        bucket.acquire(5)
    assert clock[0] == pytest.approx(2.0)  # 20 events after the first 5, at 10/s


# ---------------------------------------------------------------------------------------------- admin and permissions


def test_operator_group_has_exactly_the_dead_letter_permissions() -> None:
    perms = set(Group.objects.get(name=OPERATORS).permissions.values_list("codename", flat=True))
    assert perms == {"view_deadletter", "change_deadletter", "replay_deadletter", "discard_deadletter"}
    assert Permission.objects.filter(codename="replay_deadletter", content_type__app_label="publisher").exists()


def test_users_without_the_permissions_get_403(kafka_reader: Any) -> None:
    row = make_dead_letter()
    ensure_routing_editors_group()  # the real group (its migration's rows are flushed between tests)
    editor = make_user("rules-editor", groups=(ROUTING_EDITORS_GROUP,))
    assert editor.has_perm("routing.change_routingrule")
    assert not any(editor.has_perm(f"publisher.{p}") for p in ("replay_deadletter", "discard_deadletter"))
    viewer = make_user("dlq-viewer")
    viewer.user_permissions.add(Permission.objects.get(codename="view_deadletter"))
    viewer = User.objects.get(pk=viewer.pk)

    for user in (editor, viewer):
        client = logged_in(user)
        assert client.post(change_url(row, "replay"), {"replay_count": 0}).status_code == 403
        assert client.post(change_url(row, "discard"), {"reason": "x"}).status_code == 403
        assert client.post(change_url(row), {"payload": orjson.dumps(row.payload).decode()}).status_code == 403
        assert client.get(reverse("admin:publisher_deadletter_replay_by_filter")).status_code == 403
    assert logged_in(editor).get(change_url(row)).status_code == 403
    assert logged_in(viewer).get(change_url(row)).status_code == 200  # may look, not touch
    row.refresh_from_db()
    assert (row.status, row.replay_count) == ("pending", 0)

    # The operator may; GET on an operation is refused (POST only), and every action lands in the history.
    user = operator()
    client = logged_in(user)
    assert client.get(change_url(row, "replay")).status_code == 405
    reader = kafka_reader(TOPIC)
    response = client.post(change_url(row, "replay"), {"replay_count": 0}, follow=True)
    assert response.status_code == 200
    assert "Replayed to test.dlq.replay" in response.content.decode()
    assert len(records_for(reader, [str(row.event_id)])) == 1
    entry = LogEntry.objects.get(object_id=str(row.pk), user=user)
    assert "Replayed to" in entry.get_change_message()
    # A stale page (its replay count is behind) does not replay a second time.
    stale = client.post(change_url(row, "replay"), {"replay_count": 0}, follow=True).content.decode()
    assert "Not replayed" in stale


def test_admin_edit_shows_errors_with_paths_and_keeps_the_original() -> None:
    row = make_dead_letter(factories.attempt(quality=1))
    user = operator()
    client = logged_in(user)
    bad = row.payload | {"quality": 42}

    response = client.post(change_url(row), {"payload": orjson.dumps(bad).decode()})

    assert response.status_code == 200
    assert "quality: must be an integer between 0 and 5" in response.content.decode()
    response = client.post(change_url(row), {"payload": orjson.dumps(row.payload | {"quality": 4}).decode()})
    assert response.status_code == 302
    edited = DeadLetter.objects.get(pk=row.pk)
    assert edited.payload["quality"] == 4
    assert edited.original_payload == row.payload
    assert LogEntry.objects.filter(object_id=str(row.pk), user=user).exists()
    # A replayed entry is read-only.
    assert replay.replay_one(dead_letter_id=row.pk, actor=actor(user)).ok
    page = client.get(change_url(row)).content.decode()
    assert 'name="payload"' not in page
    assert client.post(change_url(row), {}).status_code == 302  # saving a read-only entry changes nothing
    assert DeadLetter.objects.get(pk=row.pk).payload["quality"] == 4


def test_admin_discard_button_and_bulk_actions() -> None:
    rows = make_dead_letters([factories.activity() for _ in range(4)])
    user = operator()
    client = logged_in(user)

    assert "A reason is required" in client.post(change_url(rows[0], "discard"), {}, follow=True).content.decode()
    client.post(change_url(rows[0], "discard"), {"reason": "duplicate of a fixed event"})
    assert DeadLetter.objects.get(pk=rows[0].pk).status == "discarded"

    changelist = reverse("admin:publisher_deadletter_changelist")
    selected = {"_selected_action": [rows[1].pk, rows[2].pk], "index": 0}
    confirm = client.post(changelist, selected | {"action": "discard_selected"})
    assert confirm.status_code == 200 and b"Reason" in confirm.content
    done = client.post(changelist, selected | {"action": "discard_selected", "apply": "1", "reason": "bad client"})
    assert done.status_code == 302
    assert set(DeadLetter.objects.filter(discard_reason="bad client").values_list("pk", flat=True)) == {
        rows[1].pk,
        rows[2].pk,
    }
    response = client.post(
        changelist, {"_selected_action": [rows[2].pk, rows[3].pk], "index": 0, "action": "replay_selected"}, follow=True
    )
    assert "1 replayed, 0 failed, 1 skipped" in response.content.decode()
    assert DeadLetter.objects.get(pk=rows[3].pk).status == "replayed"
    assert LogEntry.objects.filter(user=user, object_id=str(rows[3].pk)).exists()


def test_changelist_filters_search_and_counts_without_full_counts() -> None:
    rows = make_dead_letters([factories.activity() for _ in range(3)])
    make_dead_letter(factories.attempt(), topic=PROTO_TOPIC, error=ValueError("nope"), reason="permanent_error")
    replay.discard(dead_letter_ids=[rows[0].pk], actor=actor(), reason="noise")
    client = logged_in(make_user("root", superuser=True))
    url = reverse("admin:publisher_deadletter_changelist")

    with CaptureQueriesContext(connection) as queries:
        page = client.get(url).content.decode()
    assert 'data-status="pending">3<' in page and 'data-status="discarded">1<' in page
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert all("LIMIT" in sql.upper() or "GROUP BY" in sql.upper() for sql in counts), counts
    assert len(queries.captured_queries) < 30

    for params, expected in [
        ({"original_topic": PROTO_TOPIC}, 1),
        ({"error_class": "ValueError"}, 1),
        ({"event_type": "activity", "status__exact": "pending"}, 2),
        ({"reason__exact": "permanent_error"}, 1),
        ({"q": str(rows[1].event_id)}, 1),
        ({"q": rows[2].user_id}, 1),
        ({"q": "no-such-user"}, 0),
    ]:
        response = client.get(url, params)
        assert response.status_code == 200, params
        assert response.context["cl"].result_count == expected, params
    filtered = client.get(url, {"created_at__gte": timezone.now().replace(hour=0, minute=0).isoformat()})
    assert filtered.status_code == 200


def test_retry_policy_and_settings_singletons_are_in_the_admin() -> None:
    client = logged_in(make_user("root", superuser=True))
    assert client.get(reverse("admin:publisher_retrypolicy_change")).status_code == 200
    assert client.get(reverse("admin:publisher_deadlettersettings_change")).status_code == 200


# ---------------------------------------------------------------------------------------------- commands


def test_purge_dead_letters_deletes_old_discarded_entries_in_chunks() -> None:
    old_discarded, new_discarded, old_replayed, old_pending = make_dead_letters(
        [factories.activity() for _ in range(4)]
    )
    old = timezone.now() - timedelta(days=40)
    DeadLetter.objects.filter(pk=old_discarded.pk).update(
        status="discarded", discarded_at=old, discard_reason="x", created_at=old
    )
    DeadLetter.objects.filter(pk=new_discarded.pk).update(status="discarded", discarded_at=timezone.now())
    DeadLetter.objects.filter(pk=old_replayed.pk).update(status="replayed", replayed_at=old)
    DeadLetter.objects.filter(pk=old_pending.pk).update(created_at=old, last_failed_at=old)
    ids = {r.pk for r in (old_discarded, new_discarded, old_replayed, old_pending)}

    out = io.StringIO()
    call_command("purge_dead_letters", "--older-than", "30d", "--dry-run", stdout=out)
    assert "would delete 1 discarded" in out.getvalue()
    assert DeadLetter.objects.filter(pk__in=ids).count() == 4

    out = io.StringIO()
    call_command("purge_dead_letters", "--older-than", "30d", "--chunk-size", "1", stdout=out)
    assert "Deleted 1 discarded" in out.getvalue()
    assert set(DeadLetter.objects.filter(pk__in=ids).values_list("pk", flat=True)) == ids - {old_discarded.pk}

    call_command("purge_dead_letters", "--older-than", "30d", "--include-replayed", stdout=io.StringIO())
    assert set(DeadLetter.objects.filter(pk__in=ids).values_list("pk", flat=True)) == {
        new_discarded.pk,
        old_pending.pk,
    }
    with pytest.raises(Exception, match="not an age"):
        call_command("purge_dead_letters", "--older-than", "thirty days")


def test_replay_dead_letters_command_dry_run_filters_and_rate(kafka_reader: Any) -> None:
    error_class = f"TestError{uuid.uuid4().hex[:6]}"
    wanted = make_dead_letters([factories.activity() for _ in range(6)], error=type(error_class, (Exception,), {})())
    other = make_dead_letter()  # same topic, other error class: not taken
    ids = [r.pk for r in wanted]

    out = io.StringIO()
    call_command("replay_dead_letters", "--topic", TOPIC, "--error-class", error_class, "--dry-run", stdout=out)
    assert "would replay 6 of 6 pending" in out.getvalue()
    assert set(DeadLetter.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"pending"}

    reader = kafka_reader(TOPIC)
    out = io.StringIO()
    started = time.monotonic()
    call_command(
        "replay_dead_letters",
        "--topic", TOPIC, "--error-class", error_class, "--since", "1h", "--limit", "5", "--rate", "4",
        stdout=out,
    )  # fmt: skip
    elapsed = time.monotonic() - started

    assert "5 replayed, 0 failed" in out.getvalue()
    # Paced: 5 events at 4/s, the first chunk (2 events) without waiting.
    assert elapsed >= (5 - replay.chunk_size_for(4)) / 4 - 0.1
    statuses = dict(DeadLetter.objects.filter(pk__in=[*ids, other.pk]).values_list("pk", "status"))
    assert [statuses[pk] for pk in ids] == ["replayed"] * 5 + ["pending"]  # oldest first, limit 5
    assert statuses[other.pk] == "pending"
    assert len(records_for(reader, [str(r.event_id) for r in wanted[:5]])) == 5
    assert set(ReplayAttempt.objects.filter(dead_letter_id__in=ids).values_list("via", flat=True)) == {"command"}


# ---------------------------------------------------------------------------------------------- background jobs


def _wait_for(predicate: Any, *, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_replay_job_runs_in_the_worker_with_progress(celery_worker: WorkerProcess, kafka_reader: Any) -> None:
    error_class = f"JobError{uuid.uuid4().hex[:6]}"
    rows = make_dead_letters([factories.activity() for _ in range(8)], error=type(error_class, (Exception,), {})())
    user = operator()
    client = logged_in(user)
    reader = kafka_reader(TOPIC)

    response = client.post(
        reverse("admin:publisher_deadletter_replay_by_filter"),
        {"topic": TOPIC, "error_class_name": error_class, "rate": "20", "_preview": "1"},
    )
    assert response.status_code == 200
    assert response.context["preview"]["total"] == 8
    response = client.post(
        reverse("admin:publisher_deadletter_replay_by_filter"),
        {"topic": TOPIC, "error_class_name": error_class, "rate": "20", "_start": "1"},
    )
    assert response.status_code == 302
    job = ReplayJob.objects.get()
    assert job.created_by == user

    _wait_for(lambda: ReplayJob.objects.get(pk=job.pk).status == "finished", what="the job to finish")
    job.refresh_from_db()
    assert (job.total, job.done, job.replayed, job.failed) == (8, 8, 8, 0)
    assert job.percent == 100
    assert set(DeadLetter.objects.filter(pk__in=[r.pk for r in rows]).values_list("status", flat=True)) == {"replayed"}
    assert len(records_for(reader, [str(r.event_id) for r in rows])) == 8
    assert ReplayAttempt.objects.filter(job=job, user=user, via="job").count() == 8
    history = LogEntry.objects.filter(user=user)
    assert history.filter(content_type__model="deadletter", object_id__in=[str(r.pk) for r in rows]).count() == 8
    assert history.filter(content_type__model="replayjob", object_id=str(job.pk)).exists()  # who started it
    page = client.get(response["Location"]).content.decode()
    assert "8 / 8" in page and "finished" in page


def test_replay_job_can_be_cancelled_between_chunks(celery_worker: WorkerProcess) -> None:
    error_class = f"JobError{uuid.uuid4().hex[:6]}"
    rows = make_dead_letters([factories.activity() for _ in range(30)], error=type(error_class, (Exception,), {})())
    user = operator()
    client = logged_in(user)
    job = replay.start_job(
        filters=replay.ReplayFilters(topic=TOPIC, error_class=error_class), actor=actor(user), rate=4
    )
    _wait_for(lambda: ReplayJob.objects.get(pk=job.pk).done >= 2, what="the job to make progress")

    response = client.post(reverse("admin:publisher_deadletter_replay_job_cancel", args=[job.pk]))
    assert response.status_code == 302
    _wait_for(lambda: ReplayJob.objects.get(pk=job.pk).status == "cancelled", timeout=20, what="the cancel")

    job.refresh_from_db()
    replayed = DeadLetter.objects.filter(pk__in=[r.pk for r in rows], status="replayed").count()
    assert 2 <= job.done < 30
    assert job.replayed == replayed == job.done
    assert DeadLetter.objects.filter(pk__in=[r.pk for r in rows], status="pending").count() == 30 - replayed
    time.sleep(1.0)  # nothing more happens after the cancel
    assert DeadLetter.objects.filter(pk__in=[r.pk for r in rows], status="replayed").count() == replayed
    assert "cancelled" in client.get(reverse("admin:publisher_deadletter_replay_job", args=[job.pk])).content.decode()
