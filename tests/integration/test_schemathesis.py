"""schemathesis against the live OpenAPI schema: every phase (examples, coverage, fuzzing, stateful), every
check, positive and negative data (valid UTF-8 only: the API rejects anything else by design). Generated
bodies that break rules the schema language cannot express are filtered by tests/schemathesis_hooks.py.
A failure prints schemathesis's own report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import WebServer

pytestmark = pytest.mark.django_db(transaction=True)
ST = Path(sys.executable).with_name("st")
ROOT = Path(__file__).resolve().parents[2]


def test_schemathesis_finds_no_failing_check(web_server: WebServer, api_key: str, default_routing: None) -> None:
    result = subprocess.run(
        [
            str(ST), "run", f"{web_server.url}/api/schema/?format=json",
            "--url", web_server.url,
            "--checks", "all",
            "--phases", "examples,coverage,fuzzing,stateful",
            "--mode", "all",
            "--max-examples", "40",
            "--seed", "20261127",
            "--header", f"Authorization: Api-Key {api_key}",
            "--request-timeout", "10",
            "--workers", "2",
            "--suppress-health-check", "too_slow,filter_too_much",
            "--generation-codec", "utf-8",
            "--no-color",
        ],
        env=os.environ | {"SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks", "PYTHONPATH": str(ROOT)},
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
