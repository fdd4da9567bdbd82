"""End to end in a real browser (Debian's Chromium driven by Playwright): an operator logs into the admin, opens a
dead letter, clicks Replay, sees the success message, and the record is read back from its Kafka topic."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import User
from django.db import connections

from publisher import kafka_gateway
from publisher.models import DeadLetter
from tests import factories
from tests.browser import csp_violations, launch_chromium
from tests.integration.test_dead_letters import TOPIC, make_dead_letter, records_for

pytestmark = pytest.mark.django_db(transaction=True)

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


@pytest.fixture
def page(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls the test makes are still plain
    # synchronous code, so tell Django not to refuse them.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            yield context.new_page()
        finally:
            # ORM calls made while Playwright's loop runs get their own connection (Django keeps connections per
            # context); close it here, or the test database could not be dropped at the end of the session.
            connections.close_all()
            browser.close()


def test_operator_replays_a_dead_letter_from_the_admin(page: Any, live_server: Any, kafka_reader: Any) -> None:
    kafka_gateway.ensure_topics(names=[TOPIC], partitions=1, replication_factor=1)
    password = "browser-test-password"
    User.objects.create_superuser("browser-admin", "admin@example.com", password)
    row = make_dead_letter(factories.activity(activity_type="lesson_opened"))
    reader = kafka_reader(TOPIC)
    ARTIFACTS.mkdir(exist_ok=True)
    blocked = csp_violations(page)

    page.goto(f"{live_server.url}/admin/login/?next=/admin/publisher/deadletter/")
    page.fill("#id_username", "browser-admin")
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_selector("#dlq-status-counts")
    # The admin's static files are served (its stylesheet applies).
    assert page.request.get(f"{live_server.url}/static/admin/css/base.css").status == 200
    assert page.evaluate("getComputedStyle(document.querySelector('#header')).display") == "flex"

    assert page.inner_text("#dlq-status-counts [data-status=pending]") == "1"
    page.screenshot(path=str(ARTIFACTS / "dead_letter_list.png"), full_page=True)

    page.click(f"text={row.event_id}")
    page.wait_for_selector("#dlq-replay-button")
    assert "lesson_opened" in page.inner_text(".field-decoded_value")  # the record value, decoded
    page.click("#dlq-replay-button")
    success = page.wait_for_selector(".messagelist .success")
    assert f"Replayed to {TOPIC}" in success.inner_text()
    page.screenshot(path=str(ARTIFACTS / "dead_letter_replayed.png"), full_page=True)

    [record] = records_for(reader, [str(row.event_id)])
    assert record.headers["event_id"] == str(row.event_id).encode()
    assert orjson.loads(record.value) == row.payload
    row.refresh_from_db()
    assert row.status == DeadLetter.Status.REPLAYED
    assert row.replayed_by is not None and row.replayed_by.username == "browser-admin"
    assert LogEntry.objects.filter(object_id=str(row.pk), user__username="browser-admin").exists()
    # The page now shows the replay in the history, and no Replay button any more.
    assert "browser-admin" in page.inner_text(".field-replay_history")
    assert page.query_selector("#dlq-replay-button") is None
    assert page.query_selector("input[name=_save]") is None  # nothing left to edit
    assert not blocked, blocked  # the admin's Content-Security-Policy blocked nothing these pages need
