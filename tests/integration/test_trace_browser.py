"""The admin's Trace an event screen in a real browser (Debian's Chromium driven by Playwright): from the admin's
home page to an event's trace, to its dead letter and back."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User

from publisher import kafka_gateway
from routing.services import current_routing
from tests import factories
from tests.browser import csp_violations
from tests.integration.test_dead_letter_browser import ARTIFACTS, page  # noqa: F401  (the fixture)
from tests.integration.test_dead_letters import TOPIC, make_dead_letters

pytestmark = pytest.mark.django_db(transaction=True)


def test_operator_traces_a_dead_lettered_event(page: Any, live_server: Any, default_routing: None) -> None:  # noqa: F811
    kafka_gateway.ensure_topics(names=[TOPIC], partitions=1, replication_factor=1)
    password = "browser-test-password"
    User.objects.create_superuser("trace-admin", "admin@example.com", password)
    [row] = make_dead_letters([factories.activity(activity_type="lesson_opened")])
    rules_now = current_routing().route(row.payload).matched_rules
    assert rules_now  # the seed routes every activity
    ARTIFACTS.mkdir(exist_ok=True)
    blocked = csp_violations(page)

    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", "trace-admin")
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.click("#ops-trace-link")
    page.fill("#trace-event-id", str(row.event_id))
    page.click("#trace-submit")
    page.wait_for_selector("#trace-status")
    assert page.inner_text("#trace-status") == "dead_lettered"
    dead_letters = page.inner_text("#trace-dead-letters")
    assert f"#{row.pk}" in dead_letters and TOPIC in dead_letters and "retries_exhausted" in dead_letters
    assert "never replayed" in dead_letters
    for rule in rules_now:
        assert rule in page.inner_text("#trace-rules")
    assert "lesson_opened" in page.inner_text("#trace-event")
    page.screenshot(path=str(ARTIFACTS / "trace_event.png"), full_page=True)

    page.click(f"#trace-dead-letters >> text=#{row.pk}")
    page.wait_for_selector("#dlq-replay-button")
    page.click("#dlq-trace-link")
    page.wait_for_selector("#trace-status")
    assert page.input_value("#trace-event-id") == str(row.event_id)

    page.fill("#trace-event-id", "not an id")
    page.click("#trace-submit")
    assert "is not an event id" in page.inner_text("#trace-error")
    assert not blocked, blocked
