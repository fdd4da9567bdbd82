"""Production settings: `check --deploy` is clean with the production environment, the web tier behind a
TLS-terminating proxy redirects plain HTTP and sends HSTS and Secure cookies, local plain-HTTP defaults keep
working, and the admin and the API docs carry a Content-Security-Policy."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import WebServer

ROOT = Path(__file__).resolve().parents[2]

# What a deployment behind a TLS-terminating proxy sets (docs/configuration.md).
PRODUCTION_ENV = {
    "DEBUG": "false",
    "SECRET_KEY": secrets.token_urlsafe(50),
    "ALLOWED_HOSTS": "ingest.example.com,127.0.0.1",
    "CSRF_TRUSTED_ORIGINS": "https://ingest.example.com",
    "BEHIND_TLS_PROXY": "true",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
    "SECURE_HSTS_PRELOAD": "true",
}


def test_check_deploy_is_clean_with_the_production_environment() -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=os.environ | PRODUCTION_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("BEHIND_TLS_PROXY", "maybe", "is not a boolean"),
        ("SECURE_HSTS_SECONDS", "-1", "must be an integer >= 0"),
        ("SECURE_HSTS_SECONDS", "a year", "is not an integer"),
        ("SECURE_SSL_REDIRECT", "sometimes", "is not a boolean"),
    ],
)
def test_bad_security_setting_stops_startup_naming_the_variable(name: str, value: str, expected: str) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=os.environ | {"SECRET_KEY": "test", name: value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert f"{name}={value!r}" in result.stderr and expected in result.stderr, result.stderr


class ProxiedWebServer(WebServer):
    """The web tier with the production environment. Behind the proxy plain HTTP is redirected, so readiness
    is probed on the health URL, which stays plain HTTP for probes and Prometheus inside the network."""

    def _answers(self) -> bool:
        try:
            requests.get(f"{self.url}/metrics/publisher/health", timeout=2, allow_redirects=False)
        except requests.ConnectionError:
            return False
        return True


@pytest.fixture
def proxied_server(django_db_setup: Any) -> Iterator[WebServer]:
    server = ProxiedWebServer(workers=1, extra_env=PRODUCTION_ENV)
    yield server
    server.stop()


def test_behind_the_tls_proxy_http_is_redirected_and_https_gets_hsts_and_secure_cookies(
    proxied_server: WebServer,
) -> None:
    plain = requests.get(f"{proxied_server.url}/admin/login/", allow_redirects=False, timeout=10)
    assert plain.status_code == 301
    assert plain.headers["Location"] == f"https://127.0.0.1:{proxied_server.port}/admin/login/"

    # What the proxy forwards after terminating TLS.
    https = requests.get(
        f"{proxied_server.url}/admin/login/", headers={"X-Forwarded-Proto": "https"}, allow_redirects=False, timeout=10
    )
    assert https.status_code == 200, https.text[:500]
    assert https.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
    csrf_cookie = next(c for c in https.cookies if c.name == "csrftoken")
    assert csrf_cookie.secure
    # The login form posts to the same https origin, so the secure cookies come back.
    assert 'action="/admin/login/' in https.text

    # Liveness probes and Prometheus scrape the web tier directly, in plain HTTP: not redirected.
    health = requests.get(f"{proxied_server.url}/metrics/publisher/health", allow_redirects=False, timeout=10)
    assert health.status_code in (200, 503), health.status_code


def test_local_defaults_serve_plain_http_with_ordinary_cookies(web_server: WebServer) -> None:
    """`make run` serves http://127.0.0.1:8083: no redirect, no HSTS, cookies a browser sends back over http."""
    response = requests.get(f"{web_server.url}/admin/login/", allow_redirects=False, timeout=10)
    assert response.status_code == 200
    assert "Strict-Transport-Security" not in response.headers
    csrf_cookie = next(c for c in response.cookies if c.name == "csrftoken")
    assert not csrf_cookie.secure


def _directives(header: str) -> dict[str, list[str]]:
    parts = (part.strip().split() for part in header.split(";") if part.strip())
    return {part[0]: part[1:] for part in parts}


@pytest.mark.parametrize("path", ["/admin/login/", "/admin/dashboard/", "/api/docs/"])
def test_admin_and_docs_send_a_content_security_policy(web_server: WebServer, path: str) -> None:
    response = requests.get(f"{web_server.url}{path}", allow_redirects=False, timeout=10)
    assert response.status_code in (200, 302), response.status_code
    policy = _directives(response.headers["Content-Security-Policy"])
    # No inline or injected script runs: scripts only from this origin's files.
    assert policy["script-src"] == ["'self'"]
    assert policy["default-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["base-uri"] == ["'self'"]
    assert policy["form-action"] == ["'self'"]
