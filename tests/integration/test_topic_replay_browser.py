"""End to end in a real browser (Debian's Chromium driven by Playwright): an operator starts a topic replay from the
admin, watches its page refresh until it finished, and the events are read back from the target topic."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connections

from publisher.models import TopicReplayJob
from tests.browser import ARTIFACTS, csp_violations, launch_chromium
from tests.conftest import WorkerProcess
from tests.integration.test_topic_replay import attempts, event_ids, iso, produce, reader_for
from tests.integration.test_topic_replay import scratch as scratch  # the fixture, shared

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def page(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's ORM calls are plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            yield browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        finally:
            connections.close_all()  # the connection ORM calls got under Playwright's loop
            browser.close()


def test_operator_starts_a_topic_replay_and_watches_it_finish(
    page: Any, live_server: Any, celery_worker: WorkerProcess, scratch: Any
) -> None:
    from playwright.sync_api import expect

    source, target = scratch("src"), scratch("dst")
    events = attempts(12)
    produce(source, events, seconds=[float(i) for i in range(12)])
    password = "browser-test-password"
    User.objects.create_superuser("browser-admin", "admin@example.com", password)
    blocked = csp_violations(page)

    page.goto(f"{live_server.url}/admin/login/?next=/admin/publisher/topicreplayjob/add/")
    page.fill("#id_username", "browser-admin")
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.fill("#id_source_topic", source)
    page.fill("#id_since", iso(0))
    page.fill("#id_until", iso(60))
    page.fill("#id_target_topic", target)
    page.fill("#id_rate", "4")  # about 3 s: the page refreshes while it runs
    page.click("input[name=_start]")
    page.wait_for_selector("#topic-replay-status")
    assert "started" in page.inner_text(".messagelist")
    page.screenshot(path=str(ARTIFACTS / "topic_replay_running.png"), full_page=True)

    expect(page.locator("#topic-replay-status")).to_have_text("finished", timeout=60_000)  # through the refreshes
    assert page.inner_text("#topic-replay-progress") == "12 / 12"
    assert page.inner_text("#topic-replay-replayed") == "12"
    page.screenshot(path=str(ARTIFACTS / "topic_replay_finished.png"), full_page=True)
    assert sorted(event_ids(reader_for(target).read(expected=12))) == sorted(e["event_id"] for e in events)
    assert TopicReplayJob.objects.get().created_by.username == "browser-admin"  # type: ignore[union-attr]
    assert blocked == []
