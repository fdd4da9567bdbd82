"""The routing admin driven as a browserless client: rules and topics, pattern validation, permissions and
history, the rule tester (page and JSON endpoint), and live reload on a running worker."""

from __future__ import annotations

import importlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.test import Client
from django.urls import reverse
from django.utils.html import escape

from config.redis import get_redis
from events.schema import validate_event
from publisher.services import enqueue_events
from routing import services
from routing.models import RoutingRule, Topic
from routing.seed import seed_default_routing
from tests import factories
from tests.conftest import WorkerProcess

ML = "ml.training_events"
ATTEMPTS = "user.attempts"
SESSIONS = "user.sessions"
PLACEMENTS = "user.placements"
ACTIVITIES = "user.activities"
ML_RULE = "High-quality attempts to ML training"
ALL_ATTEMPTS_RULE = "All attempts"

CHANGELIST = "/admin/routing/routingrule/"
ADD = "/admin/routing/routingrule/add/"
TESTER = "/admin/routing/routingrule/tester/"
TOPICS = "/admin/routing/topic/"
API = "/api/routing/test"


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture
def seeded(db: Any) -> None:
    """The seed's topics and rules and the editors group (a transactional test elsewhere may have flushed them)."""
    seed_default_routing()
    services.ensure_routing_editors_group()


def _user(username: str, *, staff: bool = True, group: str | None = None, perms: tuple[str, ...] = ()) -> User:
    user = User.objects.create_user(username=username, password="pw-not-used", is_staff=staff)
    if group:
        user.groups.add(Group.objects.get(name=group))
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(content_type__app_label="routing", codename=codename))
    return user


def _client(user: User | None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


@pytest.fixture
def editor(seeded: None) -> User:
    return _user("editor", group=services.ROUTING_EDITORS_GROUP)


@pytest.fixture
def editor_client(seeded: None, editor: User) -> Client:
    return _client(editor)


@pytest.fixture
def viewer_client(seeded: None) -> Client:
    return _client(_user("viewer", perms=("view_routingrule", "view_topic")))


def _topic_id(name: str) -> int:
    return Topic.objects.get(name=name).pk


def _rule(name: str) -> RoutingRule:
    return RoutingRule.objects.get(name=name)


def _rule_form(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "Quiz activities",
        "description": "",
        "event_type": "activity",
        "pattern": '{"activity_type": ["quiz"]}',
        "destinations": [_topic_id(SESSIONS)],
        "priority": "5",
        "enabled": "on",
        "_save": "Save",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def _form_data_of(rule: RoutingRule, **overrides: Any) -> dict[str, Any]:
    current: dict[str, Any] = {
        "name": rule.name,
        "description": rule.description,
        "event_type": rule.event_type,
        "pattern": json.dumps(rule.pattern),
        "destinations": [t.pk for t in rule.destinations.all()],
        "priority": str(rule.priority),
        "enabled": "on" if rule.enabled else None,
        "stop_processing": "on" if rule.stop_processing else None,
    }
    return _rule_form(**(current | overrides))


def _change_url(rule: RoutingRule) -> str:
    return reverse("admin:routing_routingrule_change", args=[rule.pk])


def _form_errors(response: Any) -> dict[str, list[str]]:
    return {name: list(errors) for name, errors in response.context["adminform"].form.errors.items()}


def _rules_version() -> int:
    raw = get_redis().get(services.RULES_VERSION_KEY)
    return int(raw) if raw else 0


# ------------------------------------------------------------------------------------------------ lists


def test_rule_changelist_renders_with_filters_search_and_tester_link(editor_client: Client) -> None:
    response = editor_client.get(CHANGELIST)
    assert response.status_code == 200
    body = response.content.decode()
    for name in (ML_RULE, ALL_ATTEMPTS_RULE, "Sessions with attempted items", "All activities"):
        assert escape(name) in body
    for title in ("By event type", "By enabled", "By destinations"):
        assert title in body
    assert f'href="{TESTER}"' in body
    names = [rule.name for rule in response.context["cl"].result_list]
    priorities = [rule.priority for rule in response.context["cl"].result_list]
    assert priorities == sorted(priorities)  # ordered by priority
    assert len(names) == 5

    filtered = editor_client.get(CHANGELIST, {"event_type__exact": "attempt"})
    assert [r.name for r in filtered.context["cl"].result_list] == [ML_RULE, ALL_ATTEMPTS_RULE]
    by_topic = editor_client.get(CHANGELIST, {"destinations__id__exact": _topic_id(ML)})
    assert {r.name for r in by_topic.context["cl"].result_list} == {ML_RULE, "Completed placements"}
    searched = editor_client.get(CHANGELIST, {"q": "placements"})
    assert [r.name for r in searched.context["cl"].result_list] == ["Completed placements"]
    row = editor_client.get(CHANGELIST, {"q": ML_RULE}).content.decode()
    assert ML in row  # destinations column


def test_topic_changelist_shows_rule_counts(editor_client: Client) -> None:
    response = editor_client.get(TOPICS)
    assert response.status_code == 200
    counts = {topic.name: topic.rule_count for topic in response.context["cl"].result_list}
    assert counts[ML] == 2
    assert counts[ATTEMPTS] == 1
    assert editor_client.get(TOPICS, {"q": "training"}).context["cl"].result_count == 1


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("dlq.events", "is reserved"),
        ("__consumer_offsets", "is reserved"),
        ("bad name!", "Topic names use only letters"),
        ("..", "not valid Kafka topic names"),
    ],
)
def test_topic_add_refuses_reserved_and_invalid_names(editor_client: Client, name: str, message: str) -> None:
    response = editor_client.post(f"{TOPICS}add/", {"name": name, "format": "json", "description": ""})
    assert response.status_code == 200
    assert message in " ".join(response.context["adminform"].form.errors["name"])
    assert not Topic.objects.filter(name=name).exists()


def test_topic_add_valid_name(editor_client: Client) -> None:
    from publisher import kafka_gateway

    kafka_gateway.ensure_topics(names=["audit.admin-test_1"], partitions=1, replication_factor=1)
    response = editor_client.post(f"{TOPICS}add/", {"name": "audit.admin-test_1", "format": "protobuf"})
    assert response.status_code == 302
    topic = Topic.objects.get(name="audit.admin-test_1")
    assert topic.format == "protobuf"
    assert topic.history.get().history_user.username == "editor"


def test_topic_missing_on_the_broker_is_refused_and_not_created(editor_client: Client) -> None:
    from publisher.services import topic_exists

    name = f"not.on.broker-{uuid.uuid4().hex[:8]}"
    response = editor_client.post(f"{TOPICS}add/", {"name": name, "format": "json"})
    assert response.status_code == 200
    assert "does not exist on the Kafka cluster" in " ".join(response.context["adminform"].form.errors["name"])
    assert not Topic.objects.filter(name=name).exists()
    assert not topic_exists(name=name)  # and nothing auto-created it


# ------------------------------------------------------------------------------------------------ rule form


def test_add_rule_through_admin_form_is_saved_and_in_history_with_actor(editor_client: Client) -> None:
    response = editor_client.post(ADD, _rule_form(pattern='{"activity_type": ["quiz"], "properties": {"n": [1]}}'))
    assert response.status_code == 302, _form_errors(response)
    rule = _rule("Quiz activities")
    assert rule.pattern == {"activity_type": ["quiz"], "properties": {"n": [1]}}
    assert [t.name for t in rule.destinations.all()] == [SESSIONS]
    assert (rule.priority, rule.enabled, rule.stop_processing) == (5, True, False)
    created = rule.history.earliest()
    assert created.history_type == "+"
    # simple-history writes one more record when the destinations (m2m) are set; all carry the actor.
    assert {h.history_user.username for h in rule.history.all()} == {"editor"}

    edited = editor_client.post(_change_url(rule), _form_data_of(rule, priority="7"))
    assert edited.status_code == 302, _form_errors(edited)
    history = editor_client.get(reverse("admin:routing_routingrule_history", args=[rule.pk]))
    assert history.status_code == 200
    page = history.content.decode()
    assert "editor" in page  # who
    assert "Priority:" in page or "priority:" in page  # the before/after diff
    assert "5" in page and "7" in page
    latest = rule.history.first()
    assert (latest.priority, latest.history_type, latest.history_user.username) == (7, "~", "editor")
    assert latest.diff_against(latest.prev_record).changed_fields == ["priority"]


def test_change_form_shows_pattern_as_pretty_monospace_json_and_test_button(editor_client: Client) -> None:
    rule = _rule(ML_RULE)
    response = editor_client.get(_change_url(rule))
    assert response.status_code == 200
    body = response.content.decode()
    assert "monospace" in body
    textarea = response.context["adminform"].form["pattern"].value()
    assert textarea == json.dumps({"quality": [{"numeric": [">=", 4]}]}, indent=2)
    assert escape(textarea) in body
    assert f"{TESTER}?rule={rule.pk}" in body  # "Test this rule"
    assert "Test this rule" in body


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ('{"quality": [{"bogus": 1}]}', "Invalid pattern: quality: unknown operator 'bogus'"),
        ('{"quality": 5}', "Invalid pattern: quality: must be an object or an array of alternatives"),
        ('{"quality": [5', "Pattern is not valid JSON"),
        ('{"quality": [NaN]}', "Pattern is not valid JSON: NaN is not a JSON value"),
        ('{"quality": [1e999]}', "out of range"),
        ('{"a": [1], "a": [2]}', "appears twice"),
        ("[1, 2]", "Pattern must be a JSON object"),
        ('"quality"', "Pattern must be a JSON object"),
        (json.dumps({"user_id": ["x" * 5000]}), "the limit is 4096"),
    ],
)
def test_invalid_pattern_is_rejected_with_its_message(editor_client: Client, pattern: str, message: str) -> None:
    response = editor_client.post(ADD, _rule_form(pattern=pattern))
    assert response.status_code == 200
    errors = _form_errors(response)
    assert list(errors) == ["pattern"]
    assert any(message in error for error in errors["pattern"]), errors
    body = response.content.decode()
    assert escape(message) in body  # shown on the page, at the field
    shown = response.context["adminform"].form["pattern"].value()  # given back for fixing
    assert escape(shown) in body
    # Not JSON: exactly as typed; parseable (but not a valid pattern): pretty-printed again.
    assert shown == pattern or json.loads(shown) == json.loads(pattern)
    assert not RoutingRule.objects.filter(name="Quiz activities").exists()


def test_empty_pattern_means_match_everything(editor_client: Client) -> None:
    response = editor_client.post(ADD, _rule_form(pattern=""))
    assert response.status_code == 302, _form_errors(response)
    assert _rule("Quiz activities").pattern == {}


def test_rule_needs_a_destination(editor_client: Client) -> None:
    response = editor_client.post(ADD, _rule_form(destinations=[]))
    assert response.status_code == 200
    assert "destinations" in _form_errors(response)


def test_reserved_topic_cannot_be_chosen(editor_client: Client) -> None:
    # Rows the model validator would refuse, as if written by other code: still never routing destinations.
    dlq = Topic.objects.create(name="dlq.events")
    internal = Topic.objects.create(name="__consumer_offsets")
    form = editor_client.get(ADD).context["adminform"].form
    choices = {topic.name for topic in form.fields["destinations"].queryset}
    assert ML in choices
    assert not choices & {"dlq.events", "__consumer_offsets"}
    for topic in (dlq, internal):
        response = editor_client.post(ADD, _rule_form(destinations=[topic.pk]))
        assert response.status_code == 200
        assert "Select a valid choice" in " ".join(_form_errors(response)["destinations"])
    assert not RoutingRule.objects.filter(name="Quiz activities").exists()


# ------------------------------------------------------------------------------------------------ actions


def _action(client: Client, action: str, rules: list[RoutingRule]) -> Any:
    return client.post(
        CHANGELIST, {"action": action, "_selected_action": [r.pk for r in rules], "index": "0"}, follow=True
    )


def _messages(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_enable_and_disable_actions_report_and_record_history(editor_client: Client) -> None:
    ml, everything = _rule(ML_RULE), _rule(ALL_ATTEMPTS_RULE)
    response = _action(editor_client, "disable_selected", [ml, everything])
    assert _messages(response) == ["Disabled 2 rules."]
    assert not RoutingRule.objects.filter(pk__in=[ml.pk, everything.pk], enabled=True).exists()

    response = _action(editor_client, "enable_selected", [ml])
    assert _messages(response) == ["Enabled 1 rule."]
    response = _action(editor_client, "enable_selected", [ml, everything])
    assert _messages(response) == ["Enabled 1 rule. 1 was already enabled."]
    response = _action(editor_client, "enable_selected", [ml])
    assert _messages(response) == ["All selected rules were already enabled."]
    assert RoutingRule.objects.filter(pk__in=[ml.pk, everything.pk], enabled=True).count() == 2

    latest = ml.history.first()
    assert latest.enabled is True
    assert latest.history_user.username == "editor"
    assert [h.enabled for h in ml.history.all()[:2]] == [True, False]  # enabled again, disabled


def test_list_editable_priority_and_enabled(editor_client: Client) -> None:
    formset = editor_client.get(CHANGELIST).context["cl"].formset
    data: dict[str, Any] = {
        "form-TOTAL_FORMS": str(len(formset.forms)),
        "form-INITIAL_FORMS": str(len(formset.forms)),
        "form-MIN_NUM_FORMS": "0",
        "form-MAX_NUM_FORMS": "1000",
        "_save": "Save",
    }
    for i, form in enumerate(formset.forms):
        rule = form.instance
        data[f"form-{i}-id"] = str(rule.pk)
        data[f"form-{i}-priority"] = "1" if rule.name == ALL_ATTEMPTS_RULE else str(rule.priority)
        if rule.enabled and rule.name != ML_RULE:
            data[f"form-{i}-enabled"] = "on"
    response = editor_client.post(CHANGELIST, data)
    assert response.status_code == 302
    assert _rule(ALL_ATTEMPTS_RULE).priority == 1
    assert _rule(ML_RULE).enabled is False
    assert _rule(ML_RULE).history.first().history_user.username == "editor"


# ------------------------------------------------------------------------------------------------ permissions


def test_routing_editors_group_has_exactly_the_routing_permissions(seeded: None) -> None:
    group = Group.objects.get(name=services.ROUTING_EDITORS_GROUP)
    codenames = set(group.permissions.values_list("codename", flat=True))
    assert codenames == {
        f"{action}_{model}" for action in ("add", "change", "delete", "view") for model in ("topic", "routingrule")
    } | {"view_historicaltopic", "view_historicalroutingrule", "view_historicalroutingrule_destinations"}
    assert set(group.permissions.values_list("content_type__app_label", flat=True)) == {"routing"}


def test_groups_migration_is_idempotent(seeded: None) -> None:
    from django.apps import apps

    migration = importlib.import_module("routing.migrations.0003_groups")
    migration.create_group(apps, None)
    migration.create_group(apps, None)
    assert Group.objects.filter(name=services.ROUTING_EDITORS_GROUP).count() == 1
    assert Group.objects.get(name=services.ROUTING_EDITORS_GROUP).permissions.count() == 11


def test_routing_editor_can_change_and_delete_rules(editor_client: Client) -> None:
    rule = _rule(ML_RULE)
    response = editor_client.post(
        _change_url(rule), _form_data_of(rule, destinations=[_topic_id(ML), _topic_id(ATTEMPTS)])
    )
    assert response.status_code == 302, _form_errors(response)
    assert sorted(t.name for t in rule.destinations.all()) == [ML, ATTEMPTS]
    response = editor_client.post(reverse("admin:routing_routingrule_delete", args=[rule.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not RoutingRule.objects.filter(pk=rule.pk).exists()
    deleted = RoutingRule.history.filter(id=rule.pk).first()
    assert deleted is not None and deleted.history_type == "-"
    assert deleted.history_user.username == "editor"


def test_view_only_staff_sees_rules_read_only_and_cannot_change_them(viewer_client: Client) -> None:
    rule = _rule(ML_RULE)
    listing = viewer_client.get(CHANGELIST)
    assert listing.status_code == 200
    assert listing.context["cl"].formset is None  # no list editing
    assert ADD not in listing.content.decode()
    assert "disable_selected" not in listing.content.decode()

    page = viewer_client.get(_change_url(rule))
    assert page.status_code == 200
    body = page.content.decode()
    assert 'name="pattern"' not in body  # read-only: no inputs
    assert escape('"numeric"') in body  # the pattern is shown
    assert "Test this rule" in body
    assert viewer_client.get(reverse("admin:routing_routingrule_history", args=[rule.pk])).status_code == 200

    before = (rule.priority, rule.enabled, list(rule.destinations.values_list("pk", flat=True)))
    assert viewer_client.post(_change_url(rule), _form_data_of(rule, priority="1")).status_code == 403
    assert viewer_client.post(ADD, _rule_form()).status_code == 403
    assert viewer_client.get(ADD).status_code == 403
    delete = reverse("admin:routing_routingrule_delete", args=[rule.pk])
    assert viewer_client.post(delete, {"post": "yes"}).status_code == 403
    rule.save()  # a history record to revert to (the seed migration writes none)
    version = rule.history.first()
    revert = reverse("admin:routing_routingrule_simple_history", args=[rule.pk, version.history_id])
    assert viewer_client.post(revert, _form_data_of(rule, priority="1")).status_code == 403
    assert viewer_client.post(CHANGELIST, {"_save": "Save", "form-TOTAL_FORMS": "0"}).status_code == 403
    _action(viewer_client, "disable_selected", [rule])  # not offered: nothing happens
    assert viewer_client.post(f"{TOPICS}add/", {"name": "viewer.topic", "format": "json"}).status_code == 403

    rule.refresh_from_db()
    assert (rule.priority, rule.enabled, list(rule.destinations.values_list("pk", flat=True))) == before
    assert not RoutingRule.objects.filter(name="Quiz activities").exists()
    assert not Topic.objects.filter(name="viewer.topic").exists()


def test_staff_without_routing_permissions_gets_403(seeded: None) -> None:
    client = _client(_user("nobody-special"))
    assert client.get(CHANGELIST).status_code == 403
    assert client.get(TESTER).status_code == 403
    assert client.post(API, {"event": factories.attempt()}, content_type="application/json").status_code == 403


def test_anonymous_user_is_sent_to_login(seeded: None) -> None:
    client = Client()
    for url in (CHANGELIST, ADD, TESTER, _change_url(_rule(ML_RULE)), TOPICS):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/?next=")
    assert client.post(ADD, _rule_form()).status_code == 302
    assert not RoutingRule.objects.filter(name="Quiz activities").exists()


def test_non_staff_user_is_sent_to_login(seeded: None) -> None:
    client = _client(_user("learner", staff=False))
    assert client.get(CHANGELIST).status_code == 302


# ------------------------------------------------------------------------------------------------ tester page


def _tester(client: Client, event: dict[str, Any], rule: RoutingRule | None = None, pattern: str = "") -> Any:
    data = {"event": json.dumps(event), "rule": rule.pk if rule else "", "pattern": pattern}
    return client.post(TESTER, data)


def test_tester_page_whole_rule_set_with_seed_rules(viewer_client: Client) -> None:
    page = viewer_client.get(TESTER)
    assert page.status_code == 200
    assert "csrfmiddlewaretoken" in page.content.decode()

    good = _tester(viewer_client, factories.attempt(quality=5))
    assert good.status_code == 200
    result = good.context["result"]
    assert result.topics == (ML, ATTEMPTS)
    assert result.matched_rules == (ML_RULE, ALL_ATTEMPTS_RULE)
    body = good.content.decode()
    assert f"<li>{ML}</li>" in body and f"<li>{ATTEMPTS}</li>" in body

    weak = _tester(viewer_client, factories.attempt(quality=2))
    result = weak.context["result"]
    assert result.topics == (ATTEMPTS,)
    assert [(r.name, r.result) for r in result.rules] == [(ML_RULE, "no match"), (ALL_ATTEMPTS_RULE, "matched")]
    body = weak.content.decode()
    assert f"<li>{ATTEMPTS}</li>" in body and f"<li>{ML}</li>" not in body

    placement = _tester(viewer_client, factories.placement(completed=True)).context["result"]
    assert placement.topics == (ML, PLACEMENTS)  # a rule's topics in name order
    unrouted = _tester(viewer_client, factories.session(items_attempted=0, items_correct=0))
    assert unrouted.context["result"].topics == ()
    assert "Unrouted" in unrouted.content.decode()


def test_tester_page_single_rule_and_unsaved_pattern(viewer_client: Client) -> None:
    ml = _rule(ML_RULE)
    prefilled = viewer_client.get(TESTER, {"rule": ml.pk})
    assert prefilled.context["form"]["rule"].value() == ml.pk
    assert '"quality": 5' in prefilled.context["form"]["event"].value()  # a sample of the rule's type

    one = _tester(viewer_client, factories.attempt(quality=2), rule=ml).context["result"]
    assert (one.mode, one.topics, one.rules[0].result) == ("rule", (), "no match")
    one = _tester(viewer_client, factories.attempt(quality=4), rule=ml).context["result"]
    assert one.topics == (ML,)
    other = _tester(viewer_client, factories.activity(), rule=ml).context["result"]
    assert other.rules[0].result == "other event type"

    tried = _tester(
        viewer_client, factories.attempt(quality=2), rule=ml, pattern='{"quality": [{"numeric": ["<", 3]}]}'
    )
    assert tried.context["result"].topics == (ML,)  # the rule's destinations with the unsaved pattern
    ml.refresh_from_db()
    assert ml.pattern == {"quality": [{"numeric": [">=", 4]}]}  # nothing saved

    alone = _tester(viewer_client, factories.activity(activity_type="quiz"), pattern='{"activity_type": ["quiz"]}')
    assert alone.context["result"].matched_rules == (services.UNSAVED_PATTERN_NAME,)
    assert "The pattern matches" in alone.content.decode()


def test_tester_page_shows_pattern_and_event_errors(viewer_client: Client) -> None:
    bad = _tester(viewer_client, factories.attempt(), pattern='{"quality": [{"bogus": 1}]}')
    assert bad.status_code == 200
    assert bad.context["result"] is None
    message = "Invalid pattern: quality: unknown operator 'bogus'"
    assert message in bad.context["form"].errors["pattern"]
    assert escape(message) in bad.content.decode()

    not_json = viewer_client.post(TESTER, {"event": "{nope", "rule": "", "pattern": ""})
    assert "Event is not valid JSON" in " ".join(not_json.context["form"].errors["event"])

    # An event the API would reject is still evaluated, with a warning.
    odd = _tester(viewer_client, {"event_type": "attempt", "quality": 5})
    result = odd.context["result"]
    assert result.topics == (ML, ATTEMPTS)
    assert any("user_id" in error for error in result.event_errors)
    assert "The API would reject this event" in odd.content.decode()


def test_tester_shows_where_stop_processing_ended_the_walk(editor_client: Client) -> None:
    response = editor_client.post(
        ADD,
        _rule_form(
            name="Perfect attempts only to ML",
            event_type="attempt",
            pattern='{"quality": [5]}',
            destinations=[_topic_id(ML)],
            priority="1",
            stop_processing="on",
        ),
    )
    assert response.status_code == 302, _form_errors(response)
    page = _tester(editor_client, factories.attempt(quality=5))
    result = page.context["result"]
    assert result.topics == (ML,)
    assert result.stopped_by == "Perfect attempts only to ML"
    assert [r.result for r in result.rules] == ["matched", "not evaluated", "not evaluated"]
    assert "walk ended here" in page.content.decode()
    assert _tester(editor_client, factories.attempt(quality=4)).context["result"].topics == (ML, ATTEMPTS)


NESTING_LIMIT = 64  # routing.patterns.MAX_JSON_NESTING, as the user reads it
TOO_DEEP = [NESTING_LIMIT + 1, 990, 10_000]  # just over; where json.loads recursed; far past Python's stack


def _nested(depth: int, kind: str) -> str:
    """JSON text of an object nesting `depth` levels deep: objects ({"a": {"a": ...}}) or arrays ({"a": [[...]]})."""
    if kind == "objects":
        return '{"a":' * depth + "1" + "}" * depth
    return '{"a":' + "[" * (depth - 1) + "1" + "]" * (depth - 1) + "}"


@pytest.mark.parametrize("kind", ["objects", "arrays"])
@pytest.mark.parametrize("depth", TOO_DEEP)
def test_deeply_nested_json_gets_a_clear_form_error_in_the_tester(editor_client: Client, depth: int, kind: str) -> None:
    pattern = _tester(editor_client, factories.attempt(), pattern=_nested(depth, kind))
    assert pattern.status_code == 200
    assert pattern.context["result"] is None
    message = f"Pattern is nested deeper than {NESTING_LIMIT} levels."
    assert pattern.context["form"].errors["pattern"] == [message]
    assert escape(message) in pattern.content.decode()

    event = factories.attempt()
    text = json.dumps(event)[:-1] + ', "metadata": ' + _nested(depth - 1, kind) + "}"  # the event: `depth` levels
    answer = editor_client.post(TESTER, {"event": text, "rule": "", "pattern": ""})
    assert answer.status_code == 200
    assert answer.context["result"] is None
    message = f"Event is nested deeper than {NESTING_LIMIT} levels."
    assert answer.context["form"].errors["event"] == [message]
    assert escape(message) in answer.content.decode()


@pytest.mark.parametrize("kind", ["objects", "arrays"])
@pytest.mark.parametrize("depth", TOO_DEEP)
def test_deeply_nested_pattern_gets_a_clear_error_in_the_rule_forms(
    editor_client: Client, depth: int, kind: str
) -> None:
    message = f"Pattern is nested deeper than {NESTING_LIMIT} levels."
    added = editor_client.post(ADD, _rule_form(pattern=_nested(depth, kind)))
    assert added.status_code == 200
    assert _form_errors(added) == {"pattern": [message]}
    assert not RoutingRule.objects.filter(name="Quiz activities").exists()

    rule = _rule(ML_RULE)
    changed = editor_client.post(_change_url(rule), _form_data_of(rule, pattern=_nested(depth, kind)))
    assert changed.status_code == 200
    assert _form_errors(changed) == {"pattern": [message]}
    assert escape(message) in changed.content.decode()
    rule.refresh_from_db()
    assert rule.pattern == {"quality": [{"numeric": [">=", 4]}]}


def test_nesting_within_the_limit_is_still_evaluated(editor_client: Client) -> None:
    event = factories.attempt(quality=5)
    text = json.dumps(event)[:-1] + ', "metadata": ' + _nested(NESTING_LIMIT - 1, "arrays") + "}"
    answer = editor_client.post(TESTER, {"event": text, "rule": "", "pattern": ""})
    assert answer.context["form"].errors == {}
    assert answer.context["result"].topics == (ML, ATTEMPTS)  # evaluated, with the API's objections listed

    # Brackets inside strings are text, not nesting (an escaped quote does not end the string).
    brackets = '[[[[\\"{{{{' * 40
    pattern = json.dumps({"response": [{"prefix": brackets}]})
    tried = _tester(editor_client, factories.attempt(response=brackets + "!"), pattern=pattern)
    assert tried.context["form"].errors == {}
    assert tried.context["result"].matched_rules == (services.UNSAVED_PATTERN_NAME,)


# ------------------------------------------------------------------------------------------------ JSON endpoint


def _api(client: Client, body: Any) -> Any:
    return client.post(API, body, content_type="application/json")


def test_json_endpoint_routes_with_seed_rules(viewer_client: Client) -> None:
    good = _api(viewer_client, {"event": factories.attempt(quality=5)})
    assert good.status_code == 200
    assert good.json()["topics"] == [ML, ATTEMPTS]
    assert good.json()["matched_rules"] == [ML_RULE, ALL_ATTEMPTS_RULE]

    weak = _api(viewer_client, {"event": factories.attempt(quality=2)}).json()
    assert weak["topics"] == [ATTEMPTS]
    assert weak["matched_rules"] == [ALL_ATTEMPTS_RULE]
    assert [r["result"] for r in weak["rules"]] == ["no match", "matched"]
    assert weak["event_errors"] == []

    ml = _rule(ML_RULE)
    one = _api(viewer_client, {"event": factories.attempt(quality=2), "rule_id": ml.pk}).json()
    assert (one["topics"], one["matched_rules"]) == ([], [])
    tried = _api(viewer_client, {"event": factories.attempt(quality=2), "rule_id": ml.pk, "pattern": {"quality": [2]}})
    assert tried.json()["topics"] == [ML]
    as_text = _api(viewer_client, {"event": factories.activity(), "pattern": '{"activity_type": [{"prefix": "vid"}]}'})
    assert as_text.json()["matched_rules"] == [services.UNSAVED_PATTERN_NAME]


@pytest.mark.parametrize(
    ("body", "path", "message"),
    [
        ({"event": {"event_type": "attempt"}, "pattern": {"quality": [{"bogus": 1}]}}, "pattern", "unknown operator"),
        ({"event": {"event_type": "attempt"}, "pattern": {"quality": 5}}, "pattern", "Invalid pattern"),
        ({"event": {"event_type": "attempt"}, "pattern": '{"quality": [NaN]}'}, "pattern", "not valid JSON"),
        ({"event": {"event_type": "attempt"}, "pattern": [1]}, "pattern", "must be a JSON object"),
        ({"event": {"event_type": "attempt"}, "pattern": {"a": ["x" * 5000]}}, "pattern", "the limit is 4096"),
        ({"event": {"event_type": "attempt"}, "rule_id": 999999}, "rule_id", "no routing rule"),
        ({"event": {"event_type": "attempt"}, "rule_id": True}, "rule_id", "positive integer"),
        ({"event": [1]}, "event", "JSON object"),
        ({}, "event", "required"),
        ({"event": {}, "extra": 1}, "extra", "unknown field"),
        ([1, 2], "", "JSON object"),
    ],
)
def test_json_endpoint_rejects_bad_requests(viewer_client: Client, body: Any, path: str, message: str) -> None:
    response = _api(viewer_client, body)
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert errors[0]["path"] == path
    assert message in errors[0]["message"]
    assert message in response.json()["error"]


@pytest.mark.parametrize("depth", TOO_DEEP)
def test_json_endpoint_answers_deep_nesting_with_a_400_naming_the_field(viewer_client: Client, depth: int) -> None:
    deep = _nested(depth, "arrays")
    answers = {
        "event": _api(viewer_client, '{"event": ' + deep + "}"),
        "pattern": _api(viewer_client, '{"event": {"event_type": "attempt"}, "pattern": ' + deep + "}"),
        "pattern text": _api(viewer_client, {"event": {"event_type": "attempt"}, "pattern": deep}),
    }
    for name, response in answers.items():
        assert response.status_code == 400, (name, response.content[:200])
        body = response.json()
        if depth > 1000 and name == "pattern text":  # refused for its length (4096 characters) first
            assert body["errors"][0]["path"] == "pattern"
            assert "the limit is 4096" in body["error"]
        elif depth > 1000:  # the body itself is refused while parsing it
            assert "nested too deeply" in body["error"]
        else:
            assert body["errors"][0]["path"] == name.split()[0]
            assert f"nested deeper than {NESTING_LIMIT} levels" in body["error"]


def test_json_endpoint_auth(seeded: None) -> None:
    event = {"event": factories.attempt()}
    anonymous = _api(Client(), event)
    assert anonymous.status_code == 401
    assert anonymous.has_header("WWW-Authenticate")
    assert _api(_client(_user("learner", staff=False)), event).status_code == 403
    assert _api(_client(_user("staff-no-perms")), event).status_code == 403
    viewer = _user("viewer", perms=("view_routingrule",))
    assert _api(_client(viewer), event).status_code == 200
    assert _client(viewer).get(API).status_code == 405
    bad_json = _client(viewer).post(API, "{nope", content_type="application/json")
    assert bad_json.status_code == 400
    assert _client(viewer).post(API, "event=1", content_type="text/plain").status_code == 415

    csrf_client = Client(enforce_csrf_checks=True)
    csrf_client.force_login(viewer)
    assert _api(csrf_client, event).status_code == 403  # a session needs the CSRF token
    csrf_client.get(TESTER)  # sets the csrftoken cookie
    token = csrf_client.cookies["csrftoken"].value
    ok = csrf_client.post(API, event, content_type="application/json", headers={"X-CSRFToken": token})
    assert ok.status_code == 200


def test_test_routing_service_is_not_collected_by_pytest() -> None:
    assert getattr(services.test_routing, "__test__", True) is False


# ------------------------------------------------------------------------------------------------ live reload


@pytest.mark.django_db(transaction=True)
def test_admin_changes_bump_rules_version_including_m2m(default_routing: None) -> None:
    services.ensure_routing_editors_group()
    client = _client(_user("editor", group=services.ROUTING_EDITORS_GROUP))
    rule = _rule(ML_RULE)
    services.current_routing()  # this process' cached rule set

    before = _rules_version()
    # Only the destinations change: the version still moves, and the reload sees the new m2m rows.
    response = client.post(_change_url(rule), _form_data_of(rule, destinations=[_topic_id(SESSIONS)]))
    assert response.status_code == 302, _form_errors(response)
    after_m2m = _rules_version()
    assert after_m2m > before
    assert services.current_routing().route(factories.attempt(quality=5)).topics == (SESSIONS, ATTEMPTS)
    assert services.load_snapshot().route(factories.attempt(quality=5)).topics == (SESSIONS, ATTEMPTS)

    _action(client, "disable_selected", [rule])
    after_action = _rules_version()
    assert after_action > after_m2m
    assert services.current_routing().route(factories.attempt(quality=5)).topics == (ATTEMPTS,)

    client.post(reverse("admin:routing_routingrule_delete", args=[rule.pk]), {"post": "yes"})
    assert _rules_version() > after_action

    topic = Topic.objects.get(name=PLACEMENTS)
    before_topic = _rules_version()
    response = client.post(
        reverse("admin:routing_topic_change", args=[topic.pk]),
        {"name": PLACEMENTS, "format": "protobuf", "description": "x"},
    )
    assert response.status_code == 302
    assert _rules_version() > before_topic
    assert services.current_routing().topic_formats[PLACEMENTS] == "protobuf"


def _validated(event: dict[str, Any]) -> dict[str, Any]:
    checked = validate_event(event)
    assert not isinstance(checked, list), checked
    return checked.data


def _deliveries(reader: Any, expected: dict[str, set[str]], timeout: float = 20.0) -> dict[str, Counter[str]]:
    """Topics (with counts) that received each of our event ids; read until all expected ones arrived, then a
    little longer to catch any that should not have. Other suites share the topics: filter by event id."""
    got: dict[str, Counter[str]] = {event_id: Counter() for event_id in expected}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in reader.read(expected=10**9, timeout=0.5, settle=0):
            event_id = record.headers.get("event_id", b"").decode()
            if event_id in got:
                got[event_id][record.topic] += 1
        if all(set(got[e]) >= topics for e, topics in expected.items()):
            break
    for record in reader.read(expected=10**9, timeout=1.0, settle=0):
        event_id = record.headers.get("event_id", b"").decode()
        if event_id in got:
            got[event_id][record.topic] += 1
    return got


@pytest.mark.django_db(transaction=True)
def test_rule_added_edited_disabled_and_deleted_in_admin_changes_routing_within_two_seconds(
    default_routing: None, celery_worker: WorkerProcess, kafka_reader: Callable[..., Any]
) -> None:
    services.ensure_routing_editors_group()
    client = _client(_user("editor", group=services.ROUTING_EDITORS_GROUP))
    reader = kafka_reader(ACTIVITIES, SESSIONS, PLACEMENTS)

    def publish_and_check(expected_quiz: set[str], step: str) -> None:
        quiz = _validated(factories.activity(activity_type="quiz"))
        video = _validated(factories.activity(activity_type="video_watched"))
        enqueue_events(events=[quiz, video], source="t", accepted_at=time.time())
        expected = {str(quiz["event_id"]): expected_quiz, str(video["event_id"]): {ACTIVITIES}}
        got = _deliveries(reader, expected)
        for event_id, topics in expected.items():
            log = celery_worker.output()[-3000:]
            assert got[event_id] == Counter(dict.fromkeys(topics, 1)), (step, event_id, got, log)

    def change(response: Any) -> None:
        assert response.status_code == 302, getattr(response, "context", None) and _form_errors(response)
        time.sleep(2.0)  # the contract: a change reaches every worker within 2 seconds

    publish_and_check({ACTIVITIES}, "before")

    change(client.post(ADD, _rule_form(name="Quizzes", destinations=[_topic_id(SESSIONS)], priority="5")))
    publish_and_check({ACTIVITIES, SESSIONS}, "added")

    rule = _rule("Quizzes")
    change(client.post(_change_url(rule), _form_data_of(rule, destinations=[_topic_id(PLACEMENTS)])))
    publish_and_check({ACTIVITIES, PLACEMENTS}, "edited destinations")

    rule.refresh_from_db()
    change(client.post(_change_url(rule), _form_data_of(rule, stop_processing="on")))
    publish_and_check({PLACEMENTS}, "edited: stop processing")

    response = _action(client, "disable_selected", [rule])
    assert _messages(response)[-1] == "Disabled 1 rule."  # after the add/change messages not yet shown
    time.sleep(2.0)
    publish_and_check({ACTIVITIES}, "disabled")

    _action(client, "enable_selected", [rule])
    time.sleep(2.0)
    publish_and_check({PLACEMENTS}, "enabled again")

    change(client.post(reverse("admin:routing_routingrule_delete", args=[rule.pk]), {"post": "yes"}))
    publish_and_check({ACTIVITIES}, "deleted")
