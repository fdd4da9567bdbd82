"""`make audit`'s reading of pip-audit's report (scripts/audit.py): what fails the run and what it prints."""

from __future__ import annotations

from scripts.audit import verdict

CLEAN = {"name": "django", "version": "5.2.20", "vulns": []}
VULNERABLE = {
    "name": "django",
    "version": "5.2.1",
    "vulns": [{"id": "PYSEC-2025-1", "aliases": ["CVE-2025-1"], "fix_versions": ["5.2.2", "5.1.10"]}],
}


def _skipped(name: str) -> dict[str, str]:
    return {"name": name, "skip_reason": f"Dependency not found on PyPI and could not be audited: {name} (1.0)"}


def test_a_known_vulnerability_fails_naming_package_advisory_and_fix() -> None:
    status, lines = verdict({"dependencies": [CLEAN, VULNERABLE]}, required=False)
    assert status == 1
    assert lines == ["VULNERABLE django 5.2.1: PYSEC-2025-1, CVE-2025-1; fixed in 5.2.2, 5.1.10"]


def test_clean_lock_passes() -> None:
    kombu = {"name": "kombu", "version": "5.5.4", "vulns": []}
    status, lines = verdict({"dependencies": [CLEAN, kombu]}, required=True)
    assert status == 0
    assert lines == ["audit: no known vulnerabilities in 2 locked packages"]


def test_a_package_left_unaudited_while_others_were_fails() -> None:
    status, lines = verdict({"dependencies": [CLEAN, _skipped("kombu")]}, required=False)
    assert status == 1
    assert lines[0].startswith("NOT AUDITED kombu:")


def test_an_unreachable_service_is_reported_and_fails_only_when_required() -> None:
    report = {"dependencies": [_skipped("django"), _skipped("kombu")]}
    status, lines = verdict(report, required=False)
    assert status == 0
    assert lines[0].startswith("AUDIT NOT DONE: the vulnerability service answered for none of the 2 locked packages")
    assert verdict(report, required=True)[0] == 1
