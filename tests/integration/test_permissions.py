"""Who may do what in the admin: routing editors and DLQ operators hold separate powers; anonymous users
reach no admin page; changes are in the history with their actor."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.apps import apps as django_apps
from django.contrib.auth.models import Group, User
from django.test import Client
from django.urls import reverse

from publisher.models import DeadLetter
from routing.models import RoutingRule
from routing.services import ensure_routing_editors_group

pytestmark = pytest.mark.django_db(transaction=True)

_operators_migration = __import__("publisher.migrations.0003_dlq_operators_group", fromlist=["create_group"])


@pytest.fixture
def groups(default_routing: None) -> None:
    ensure_routing_editors_group()
    _operators_migration.create_group(django_apps, None)


def user_in(group: str) -> Client:
    user = User.objects.create_user(f"u-{uuid.uuid4().hex[:8]}", password="x-" + uuid.uuid4().hex, is_staff=True)
    user.groups.add(Group.objects.get(name=group))
    client = Client()
    client.force_login(User.objects.get(pk=user.pk))
    return client


def a_dead_letter() -> DeadLetter:
    event_id = uuid.uuid4()
    return DeadLetter.objects.create(
        event_id=event_id,
        event_type="activity",
        original_topic="user.activities",
        key="u1",
        user_id="u1",
        payload={"event_type": "activity", "event_id": str(event_id), "user_id": "u1"},
        value=b"{}",
        reason=DeadLetter.Reason.RETRIES_EXHAUSTED,
        error_class="KafkaTimeoutError",
        first_failed_at="2026-11-27T00:00:00Z",
        last_failed_at="2026-11-27T00:00:00Z",
    )


def test_a_dlq_operator_cannot_change_routing_rules(groups: None) -> None:
    client = user_in("DLQ operators")
    rule = RoutingRule.objects.first()
    assert rule is not None
    change = reverse("admin:routing_routingrule_change", args=[rule.pk])
    before = (rule.priority, rule.enabled)
    response = client.post(change, {"name": rule.name, "event_type": rule.event_type, "priority": 1})
    assert response.status_code == 403
    assert client.post(reverse("admin:routing_routingrule_add"), {"name": "x"}).status_code == 403
    assert client.post(reverse("admin:routing_routingrule_delete", args=[rule.pk]), {"post": "yes"}).status_code == 403
    rule.refresh_from_db()
    assert (rule.priority, rule.enabled) == before


def test_a_routing_editor_cannot_replay_edit_or_discard_dead_letters(groups: None) -> None:
    client = user_in("Routing editors")
    row = a_dead_letter()
    assert (
        client.post(reverse("admin:publisher_deadletter_replay", args=[row.pk]), {"replay_count": 0}).status_code == 403
    )
    assert client.post(reverse("admin:publisher_deadletter_discard", args=[row.pk]), {"reason": "x"}).status_code == 403
    assert (
        client.post(reverse("admin:publisher_deadletter_change", args=[row.pk]), {"payload": "{}"}).status_code == 403
    )
    row.refresh_from_db()
    assert (row.status, row.replay_count) == (DeadLetter.Status.PENDING, 0)


@pytest.mark.parametrize(
    "name",
    [
        "admin:index",
        "admin:routing_routingrule_changelist",
        "admin:routing_topic_changelist",
        "admin:publisher_deadletter_changelist",
        "admin:publisher_deadletter_replay_by_filter",
        "admin:publisher_retrypolicy_change",
        "admin:rest_framework_api_key_apikey_changelist",
        "admin:auth_user_changelist",
    ],
)
def test_anonymous_users_reach_no_admin_page(groups: None, name: str) -> None:
    response = Client().get(reverse(name))
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_anonymous_users_cannot_see_the_dashboard(groups: None) -> None:
    response = Client().get("/admin/dashboard/")
    assert response.status_code in (302, 403)
    if response.status_code == 302:
        assert "/admin/login/" in response["Location"]


def test_rule_changes_are_in_the_history_with_their_actor(groups: None) -> None:
    client = user_in("Routing editors")
    rule = RoutingRule.objects.filter(enabled=True).first()
    assert rule is not None
    changelist = reverse("admin:routing_routingrule_changelist")
    response = client.post(changelist, {"action": "disable_selected", "_selected_action": [rule.pk]})
    assert response.status_code in (200, 302)
    rule.refresh_from_db()
    assert rule.enabled is False
    latest: Any = rule.history.first()
    assert latest.history_user is not None and latest.history_user.groups.filter(name="Routing editors").exists()
