"""The operator dashboard in a real browser (Debian's Chromium driven by playwright): real events go through the
API, a real Celery worker publishes them to Kafka, and the charts at /admin/dashboard/ show them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import requests
from django.conf import settings

from publisher import stats
from tests import factories
from tests.browser import csp_violations, launch_chromium
from tests.conftest import WorkerProcess

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
PASSWORD = "dashboard-pass-7c1f"


def _points(page: Any, chart: str) -> int:
    return int(page.eval_on_selector(f"#{chart} svg", "svg => Number(svg.dataset.points || 0)"))


def test_dashboard_charts_show_live_publishing_data(
    live_server: Any, default_routing: None, celery_worker: WorkerProcess, kafka_reader: Any, django_user_model: Any
) -> None:
    from playwright.sync_api import sync_playwright
    from rest_framework_api_key.models import APIKey

    # All database work happens before playwright starts (its event loop makes Django refuse sync ORM calls).
    django_user_model.objects.create_superuser("dash-admin", "dash@example.com", PASSWORD)
    _, key = APIKey.objects.create_key(name="dashboard-browser")
    topics = [settings.KAFKA_TOPIC_ATTEMPTS, settings.KAFKA_TOPIC_ML_TRAINING, settings.KAFKA_TOPIC_ACTIVITIES]
    reader = kafka_reader(*topics)
    published_before = int(stats.snapshot()["events_published"])  # the dashboard must show this run's events
    first_minute = int(time.time() // 60) * 60
    events = [factories.attempt(quality=5) for _ in range(12)] + [factories.activity() for _ in range(8)]
    ids: set[str] = set()
    for start in range(0, len(events), 5):
        response = requests.post(
            f"{live_server.url}/api/v1/events/batch",
            json={"events": events[start : start + 5]},
            headers={"Authorization": f"Api-Key {key}"},
            timeout=30,
        )
        assert response.status_code == 202, response.text
        ids.update(str(r["event_id"]) for r in response.json()["results"])
    expected = 12 * 2 + 8
    mine: list[Any] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(mine) < expected:
        mine += [r for r in reader.read(expected=1, timeout=1.0) if r.headers["event_id"].decode() in ids]
    assert len(mine) == expected, celery_worker.output()[-3000:]

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            blocked = csp_violations(page)
            page.goto(f"{live_server.url}/admin/login/?next=/admin/dashboard/")
            page.fill("#id_username", "dash-admin")
            page.fill("#id_password", PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_url("**/admin/dashboard/")
            page.wait_for_selector('#publisher-dashboard[data-ready="1"]', timeout=15_000)
            # The stats are written right after Kafka's acknowledgement; the page refreshes every 5 s.
            page.wait_for_function(
                "() => Number(document.querySelector('#chart-throughput svg')?.dataset.points || 0) > 0"
                " && Number(document.querySelector('#chart-latency svg')?.dataset.points || 0) > 0",
                timeout=20_000,
            )
            assert _points(page, "chart-throughput") >= 2  # two topics at least, this minute
            assert _points(page, "chart-latency") >= 3  # p50, p95, p99
            assert page.locator("#chart-errors svg").count() == 1
            legend = page.inner_text("#chart-throughput .chart-legend")
            for topic in topics:
                assert topic in legend
            assert page.locator("#chart-throughput svg path.series-line").count() >= len(topics)
            assert page.inner_text('[data-field="breaker_state"]') in {"closed", "half-open", "open"}
            page.wait_for_function(
                "n => Number(document.querySelector('[data-field=events_published]').textContent.replace(/,/g, ''))"
                " >= n",
                arg=published_before + expected,
                timeout=15_000,
            )
            recent = page.eval_on_selector_all(
                "#chart-throughput circle.point",
                "(dots, since) => dots.filter(d => Number(d.dataset.minute) >= since)"
                ".map(d => Number(d.dataset.value))",
                first_minute,
            )
            assert recent and sum(recent) >= expected, recent
            assert page.inner_text('[data-field="queue_depth"]').replace(",", "").isdigit()
            assert page.inner_text('[data-field="dlq_pending"]').replace(",", "").isdigit()
            assert page.inner_text('[data-field="p95_latency_ms"]').endswith("ms")
            # Auto-refresh: the page fetches again on its own every 5 s.
            page.wait_for_function(
                "() => Number(document.getElementById('publisher-dashboard').dataset.refreshes) >= 2", timeout=12_000
            )
            assert "error" not in (page.get_attribute("#dashboard-status", "class") or "")
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            assert not errors, errors
            assert not blocked, blocked  # the admin's Content-Security-Policy lets the dashboard work
        finally:
            browser.close()
