"""*Preview on recent traffic* against real Kafka: known events are published through the real publisher path to
topics of this test's own, then an edited rule is previewed (change form, rule tester, the reader itself) and
the counts and examples checked against what was published."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connections
from django.test import Client

from events.schema import validate_event
from publisher import kafka_gateway, recent
from publisher.services import publish_batch
from routing import services
from routing.models import RoutingRule, Topic
from tests import factories
from tests.browser import ARTIFACTS, csp_violations, launch_chromium
from tests.conftest import create_topic, free_port

pytestmark = pytest.mark.django_db(transaction=True)

HIGH = {"quality": [{"numeric": [">=", 4]}]}


@dataclass
class Lane:
    """Two topics of this test's own: every attempt (JSON) and good attempts (protobuf), with the two rules."""

    all_topic: str
    high_topic: str
    high_rule: RoutingRule
    all_rule: RoutingRule


def _valid(event: dict[str, Any]) -> dict[str, Any]:
    checked = validate_event(event)
    assert not isinstance(checked, list), checked
    return checked.data


def _publish(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    normalized = [_valid(e) for e in events]
    result = publish_batch(events=normalized, source="preview-test")
    assert result.unrouted == 0 and result.dead_lettered == 0, result
    return normalized


def _rule(name: str, event_type: str, pattern: dict[str, Any], topics: list[Topic], priority: int) -> RoutingRule:
    rule = RoutingRule.objects.create(name=name, event_type=event_type, pattern=pattern, priority=priority)
    rule.destinations.set(topics)
    return rule


@pytest.fixture
def lane(transactional_db: Any) -> Lane:
    suffix = uuid.uuid4().hex[:8]
    all_name, high_name = f"test.preview.{suffix}.all", f"test.preview.{suffix}.high"
    create_topic(all_name)
    create_topic(high_name)
    RoutingRule.objects.all().delete()  # only this test's rules route, so only its topics are read
    all_topic = Topic.objects.create(name=all_name, format="json")
    high_topic = Topic.objects.create(name=high_name, format="protobuf")
    high = _rule("High-quality attempts", "attempt", HIGH, [high_topic], 10)
    everything = _rule("Every attempt", "attempt", {}, [all_topic], 20)
    services.invalidate_local_cache()
    # The topics stay (as other tests' do): deleting them under the process's producer sets it asking for them.
    return Lane(all_name, high_name, high, everything)


@pytest.fixture
def admin_client_(transactional_db: Any) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("preview-admin", "a@example.com", "pw-not-used"))
    return client


def _form_data_of(rule: RoutingRule, **overrides: Any) -> dict[str, Any]:
    """The change form as the admin fills it for `rule`, with some fields edited (None: left empty)."""
    data: dict[str, Any] = {
        "name": rule.name,
        "description": rule.description,
        "event_type": rule.event_type,
        "pattern": json.dumps(rule.pattern),
        "destinations": [t.pk for t in rule.destinations.all()],
        "priority": str(rule.priority),
        "enabled": "on" if rule.enabled else None,
        "stop_processing": "on" if rule.stop_processing else None,
        "_preview": "Preview on recent traffic",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def _attempts(qualities: list[int]) -> list[dict[str, Any]]:
    return [factories.attempt(quality=q, correct=q >= 3) for q in qualities]


def _ids(events: Any) -> set[str]:
    return {e["event_id"] for e in events}


def _preview(client: Client, rule: RoutingRule, **overrides: Any) -> Any:
    response = client.post(f"/admin/routing/routingrule/{rule.pk}/preview/", _form_data_of(rule, **overrides))
    assert response.status_code == 200
    return response


# ------------------------------------------------------------------------------------------------ change form


def test_change_form_preview_counts_and_examples_for_an_edited_pattern(lane: Lane, admin_client_: Client) -> None:
    events = _publish(_attempts([0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5]))
    edited = {"quality": [{"numeric": [">=", 3, "<", 5]}]}  # saved: >= 4

    response = _preview(admin_client_, lane.high_rule, pattern=json.dumps(edited), preview_limit="1000")

    outcome = response.context["preview"]
    assert not outcome.error
    assert outcome.plan.source_topics == tuple(sorted([lane.all_topic, lane.high_topic]))
    assert outcome.recent.missing_topics == () and not outcome.recent.incomplete and outcome.recent.undecodable == 0
    rule = outcome.result.rule
    assert rule.events == 12
    assert (rule.matched_before, rule.matched_after) == (4, 4)
    assert rule.gained.count == 2 and _ids(rule.gained.examples) == {e["event_id"] for e in events if e["quality"] == 3}
    assert rule.lost.count == 2 and _ids(rule.lost.examples) == {e["event_id"] for e in events if e["quality"] == 5}
    assert sorted(rule.gained.examples, key=str) == sorted((e for e in events if e["quality"] == 3), key=str)
    # Whole rule set: the protobuf topic swaps its quality-5 events for the quality-3 ones; the other is unchanged.
    topics = {t.topic: t for t in outcome.result.rule_set.topics}
    high, every = topics[lane.high_topic], topics[lane.all_topic]
    assert (high.before, high.after, high.gained.count, high.lost.count) == (4, 4, 2, 2)
    assert _ids(high.gained.examples) == _ids(rule.gained.examples) and _ids(high.lost.examples) == _ids(
        rule.lost.examples
    )
    assert (every.before, every.after, every.changed) == (12, 12, False)
    # The page shows it, and the form still holds the unsaved edit; nothing was saved.
    body = response.content.decode()
    assert 'id="preview-matched-before">4<' in body and 'id="preview-matched-after">4<' in body
    assert '"numeric": [\n' in body or "&quot;numeric&quot;" in body
    assert RoutingRule.objects.get(pk=lane.high_rule.pk).pattern == HIGH


def test_whole_rule_set_diff_with_stop_processing_and_example_cap(lane: Lane, admin_client_: Client) -> None:
    events = _publish(_attempts([5, 4, 1, 4, 5, 2]))

    response = _preview(admin_client_, lane.high_rule, stop_processing="on")

    result = response.context["preview"].result
    assert (result.rule.gained.count, result.rule.lost.count) == (0, 0)  # the pattern itself did not change
    topics = {t.topic: t for t in result.rule_set.topics}
    good = {e["event_id"] for e in events if e["quality"] >= 4}
    every = topics[lane.all_topic]
    assert (every.before, every.after, every.gained.count, every.lost.count) == (6, 2, 0, 4)
    assert len(every.lost.examples) == 3 and _ids(every.lost.examples) <= good  # a few examples, not all
    assert not topics[lane.high_topic].changed
    assert (result.rule_set.unrouted_before, result.rule_set.unrouted_after) == (0, 0)


def test_disabling_a_rule_and_a_new_rule_on_the_add_form(lane: Lane, admin_client_: Client) -> None:
    events = _publish(_attempts([5, 1, 4]))
    response = _preview(admin_client_, lane.all_rule, enabled=None)
    every = {t.topic: t for t in response.context["preview"].result.rule_set.topics}[lane.all_topic]
    assert (every.before, every.after, every.lost.count) == (3, 0, 3)
    assert response.context["preview"].result.rule_set.unrouted_after == 1  # quality 1: only "Every attempt" had it

    high_topic = Topic.objects.get(name=lane.high_topic)
    data = _form_data_of(lane.all_rule, name="Poor attempts too", pattern='{"quality": [{"numeric": ["<", 4]}]}')
    data["destinations"] = [high_topic.pk]
    response = admin_client_.post("/admin/routing/routingrule/preview/", data)
    assert response.status_code == 200
    outcome = response.context["preview"]
    assert outcome.plan.saved is None and outcome.result.rule.matched_after == 1
    [poor] = [e for e in events if e["quality"] == 1]
    high = {t.topic: t for t in outcome.result.rule_set.topics}[lane.high_topic]
    assert (high.before, high.after, high.gained.examples) == (2, 3, (poor,))
    assert not RoutingRule.objects.filter(name="Poor attempts too").exists()


def test_invalid_pattern_shows_the_form_error_and_reads_nothing(
    lane: Lane, admin_client_: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_reading(**kwargs: Any) -> None:
        raise AssertionError("Kafka was read for an invalid form")

    monkeypatch.setattr("routing.admin_preview.read_recent_events", no_reading)
    response = _preview(admin_client_, lane.high_rule, pattern='{"quality": [{"numeric": [">=", "four"]}]}')
    assert response.context["preview"] is None
    errors = response.context["adminform"].form.errors["pattern"]
    assert errors and "Invalid pattern" in errors[0]
    assert "Invalid pattern" in response.content.decode()

    response = _preview(admin_client_, lane.high_rule, preview_limit=str(recent.MAX_RECENT_EVENTS + 1))
    assert response.context["preview"] is None
    assert "10000" in " ".join(response.context["preview_limit_form"].errors["preview_limit"])


def test_preview_is_post_only_and_needs_change_permission(lane: Lane, admin_client_: Client) -> None:
    url = f"/admin/routing/routingrule/{lane.high_rule.pk}/preview/"
    assert admin_client_.get(url).status_code == 405
    viewer = User.objects.create_user("preview-viewer", password="pw-not-used", is_staff=True)
    viewer.user_permissions.add(*Permission.objects.filter(codename__in=["view_routingrule", "view_topic"]))
    client = Client()
    client.force_login(viewer)
    assert client.post(url, _form_data_of(lane.high_rule)).status_code == 403
    form = admin_client_.get(f"/admin/routing/routingrule/{lane.high_rule.pk}/change/").content.decode()
    assert 'id="routing-preview-button"' in form and f"/admin/routing/routingrule/{lane.high_rule.pk}/preview/" in form


# ------------------------------------------------------------------------------------------------ rule tester


def test_rule_tester_previews_the_chosen_rule_with_the_unsaved_pattern(lane: Lane, admin_client_: Client) -> None:
    events = _publish(_attempts([5, 3, 4, 2]))
    data = {
        "event": json.dumps(factories.attempt()),
        "rule": str(lane.high_rule.pk),
        "pattern": '{"quality": [{"numeric": [">=", 3]}]}',
        "preview_limit": "100",
        "_preview": "Preview on recent traffic",
    }
    response = admin_client_.post("/admin/routing/routingrule/tester/", data)
    assert response.status_code == 200
    rule = response.context["preview"].result.rule
    assert (rule.events, rule.matched_before, rule.matched_after, rule.lost.count) == (4, 2, 3, 0)
    assert rule.gained.examples == tuple(e for e in events if e["quality"] == 3)
    assert 'id="preview-matched-after">3<' in response.content.decode()

    response = admin_client_.post("/admin/routing/routingrule/tester/", data | {"rule": ""})
    assert response.context["preview"] is None
    assert "Choose a rule to preview" in response.context["form"].errors["rule"][0]


# ------------------------------------------------------------------------------------------------ the reader


def test_reader_keeps_the_newest_n_of_the_type_once_each_decoding_protobuf(lane: Lane) -> None:
    older = _publish(_attempts([5, 5, 1, 4]))
    time.sleep(0.05)  # later record timestamps for the newer batch
    activity_rule = _rule("Activities too", "activity", {}, [Topic.objects.get(name=lane.all_topic)], 30)
    services.invalidate_local_cache()
    newer = _publish(_attempts([4, 2, 5]) + [factories.activity()])
    formats = {lane.all_topic: "json", lane.high_topic: "protobuf"}
    both = [lane.all_topic, lane.high_topic]

    got = recent.read_recent_events(topics=both, event_types={"attempt"}, limit=3, formats=formats)
    # The three newest attempts (newest first; events of one batch may share a millisecond, so as a set).
    newest = [e for e in newer if e["event_type"] == "attempt"]
    assert sorted((e.event for e in got.events), key=str) == sorted(newest, key=str)
    assert got.events[-1].timestamp_ms <= got.events[0].timestamp_ms
    assert got.counts == {"attempt": 3} and got.topics == tuple(both)

    # Read from the protobuf topic alone: exactly the good attempts as published, decoded back.
    high_only = recent.read_recent_events(topics=[lane.high_topic], event_types={"attempt"}, limit=100)
    good = [e for e in older + newer if e.get("quality", 0) >= 4]
    assert sorted((e.event for e in high_only.events), key=lambda e: e["event_id"]) == sorted(
        good, key=lambda e: e["event_id"]
    )
    assert {e.topic for e in high_only.events} == {lane.high_topic}
    activity_rule.delete()


def test_reader_bounds_empty_and_missing_topics(lane: Lane) -> None:
    missing = f"test.preview.{uuid.uuid4().hex[:8]}.missing"
    got = recent.read_recent_events(topics=[lane.all_topic, missing], event_types={"attempt"}, limit=50_000)
    assert got.limit == recent.MAX_RECENT_EVENTS
    assert got.events == () and got.topics == (lane.all_topic,) and got.missing_topics == (missing,)
    assert not got.incomplete
    assert missing not in kafka_gateway.list_topics()  # asking for it did not create it
    assert recent.read_recent_events(topics=[], event_types={"attempt"}).events == ()


def test_preview_reports_a_missing_destination_topic(lane: Lane, admin_client_: Client) -> None:
    _publish(_attempts([5]))
    ghost = Topic.objects.create(name=f"test.preview.{uuid.uuid4().hex[:8]}.ghost")  # row only, no Kafka topic
    lane.all_rule.destinations.add(ghost)
    services.invalidate_local_cache()
    response = _preview(admin_client_, lane.high_rule, pattern="{}")
    outcome = response.context["preview"]
    assert outcome.recent.missing_topics == (ghost.name,)
    assert outcome.result.rule.events == 1
    assert ghost.name in response.content.decode()


def test_preview_says_when_kafka_cannot_be_read(lane: Lane, admin_client_: Client, settings: Any) -> None:
    settings.KAFKA_BROKERS = [f"127.0.0.1:{free_port()}"]  # nothing listens there
    with pytest.raises(recent.RecentEventsUnavailable):
        recent.read_recent_events(topics=[lane.all_topic], event_types={"attempt"}, timeout=1.0)
    response = _preview(admin_client_, lane.high_rule, pattern="{}")
    outcome = response.context["preview"]
    assert outcome.error and outcome.result is None
    assert "Could not read recent events" in response.content.decode()
    assert RoutingRule.objects.get(pk=lane.high_rule.pk).pattern == HIGH


def test_reader_caps_n_at_the_maximum(lane: Lane) -> None:
    total = recent.MAX_RECENT_EVENTS + 25
    published = 0
    while published < total:
        size = min(2000, total - published)
        _publish([factories.attempt(quality=1, correct=False) for _ in range(size)])
        published += size

    got = recent.read_recent_events(topics=[lane.all_topic], event_types={"attempt"}, limit=10**6)

    assert not got.incomplete, got.incomplete
    assert len(got.events) == recent.MAX_RECENT_EVENTS == got.counts["attempt"]


# ------------------------------------------------------------------------------------------------ in a browser


@pytest.fixture
def page(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # ORM calls from the test while Playwright's loop runs
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            yield browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        finally:
            connections.close_all()  # the connection those ORM calls opened, or the test database cannot be dropped
            browser.close()


def test_editor_previews_an_edit_from_the_change_form_in_a_browser(lane: Lane, page: Any, live_server: Any) -> None:
    _publish(_attempts([0, 1, 2, 3, 4, 5, 3]))
    User.objects.create_superuser("preview-browser", "b@example.com", "browser-test-password")
    blocked = csp_violations(page)
    change_url = f"/admin/routing/routingrule/{lane.high_rule.pk}/change/"
    page.goto(f"{live_server.url}/admin/login/?next={change_url}")
    page.fill("#id_username", "preview-browser")
    page.fill("#id_password", "browser-test-password")
    page.click("input[type=submit]")
    page.wait_for_selector("#routing-preview-button")
    edited = '{"quality": [{"numeric": [">=", 3, "<", 5]}]}'
    page.fill("#id_pattern", edited)
    page.fill("#id_preview_limit", "100")

    page.click("#routing-preview-button")

    page.wait_for_selector("#preview-result")
    assert page.inner_text("#preview-events") == "7"
    assert page.inner_text("#preview-matched-before") == "2"  # saved: quality >= 4
    assert page.inner_text("#preview-matched-after") == "3"  # edited: 3 <= quality < 5
    assert page.inner_text("#preview-rule-differences [data-kind=gained] .count") == "2"
    assert page.inner_text("#preview-rule-differences [data-kind=lost] .count") == "1"
    row = f"#preview-topics tr[data-topic='{lane.high_topic}']"
    assert [page.inner_text(f"{row} .{cell}") for cell in ("before", "after", "gained", "lost")] == ["2", "3", "2", "1"]
    assert '"quality": 3' in page.inner_text("#preview-rule-differences [data-kind=gained]")
    page.screenshot(path=str(ARTIFACTS / "routing_preview.png"), full_page=True)
    # Still the unsaved edit in the form, saved nowhere; Save now goes to the change URL.
    assert json.loads(page.input_value("#id_pattern")) == json.loads(edited)
    assert RoutingRule.objects.get(pk=lane.high_rule.pk).pattern == HIGH
    assert page.get_attribute("#routingrule_form", "action") == change_url
    assert not blocked, blocked
