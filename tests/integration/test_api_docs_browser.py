"""The API docs (/api/docs/, Swagger UI from the local sidecar) in a real browser (Debian's Chromium driven by
playwright) under the site's Content-Security-Policy: the operations render and the policy blocks nothing."""

from __future__ import annotations

from typing import Any

from tests.browser import ARTIFACTS, csp_violations, launch_chromium
from tests.conftest import WebServer


def test_api_docs_render_under_the_content_security_policy(web_server: WebServer) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page: Any = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            blocked = csp_violations(page)
            response = page.goto(f"{web_server.url}/api/docs/")
            assert response is not None and "script-src 'self'" in response.headers["content-security-policy"]
            try:
                page.wait_for_selector('.opblock-summary-path[data-path="/api/v1/events/batch"]', timeout=15_000)
            finally:
                page.screenshot(path=str(ARTIFACTS / "api_docs.png"), full_page=True)
            assert not errors, errors
            assert not blocked, blocked
            paths = page.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.dataset.path)")
            assert "/api/v1/events" in paths and "/api/v1/events/batch" in paths, paths
        finally:
            browser.close()
