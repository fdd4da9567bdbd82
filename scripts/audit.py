"""`make audit`: pip-audit over the locked requirements (uv export of uv.lock), read from its JSON report.

Exits 1 on any known vulnerability (naming the package, the advisory and the fixed versions) and on any package
that could not be audited while others could. When the vulnerability service answered for none of them (no
network, or a registry mirror without PyPI's per-release JSON API), nothing was audited: that is said loudly,
and fails only with AUDIT_REQUIRED=true, so a machine that cannot reach the service can still run the tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPORT = Path(".cache/audit.json")


def verdict(report: dict[str, Any], *, required: bool) -> tuple[int, list[str]]:
    """The exit status and the lines to print for a pip-audit JSON report."""
    deps = report.get("dependencies", [])
    skipped = [d for d in deps if "skip_reason" in d]
    audited = [d for d in deps if "skip_reason" not in d]
    lines: list[str] = []
    for dep in audited:
        for vuln in dep.get("vulns", []):
            ids = ", ".join([vuln["id"], *vuln.get("aliases", [])])
            fixed = ", ".join(vuln.get("fix_versions", [])) or "no fixed release yet"
            lines.append(f"VULNERABLE {dep['name']} {dep['version']}: {ids}; fixed in {fixed}")
    if deps and not audited:
        lines.append(
            f"AUDIT NOT DONE: the vulnerability service answered for none of the {len(deps)} locked packages "
            f"({skipped[0]['skip_reason']})"
        )
        return (1 if required else 0), lines
    lines += [f"NOT AUDITED {d['name']}: {d['skip_reason']}" for d in skipped]
    if lines:
        return 1, lines
    return 0, [f"audit: no known vulnerabilities in {len(audited)} locked packages"]


def main(requirements: str) -> int:
    REPORT.parent.mkdir(exist_ok=True)
    pip_audit = Path(sys.executable).with_name("pip-audit")
    # Hashed, fully pinned requirements: pip-audit checks exactly these versions, resolving nothing.
    argv = [str(pip_audit), "--progress-spinner", "off", "--require-hashes", "--disable-pip", "-r", requirements]
    REPORT.unlink(missing_ok=True)
    # Its own summary ("No known vulnerabilities found") also follows a run that audited nothing: ours replaces it.
    result = subprocess.run(  # noqa: S603
        [*argv, "--format", "json", "--output", str(REPORT)], capture_output=True, text=True, check=False
    )
    if not REPORT.exists() or result.returncode not in (0, 1):
        print(f"audit: pip-audit failed (exit {result.returncode}):\n{result.stderr}", file=sys.stderr)
        return 1
    raw = os.environ.get("AUDIT_REQUIRED", "").strip().lower()
    if raw not in {"", "0", "1", "true", "false", "yes", "no", "on", "off"}:
        print(f"AUDIT_REQUIRED={raw!r} is not a boolean: use true/false, 1/0, yes/no or on/off", file=sys.stderr)
        return 2
    required = raw in {"1", "true", "yes", "on"}
    status, lines = verdict(json.loads(REPORT.read_text()), required=required)
    for line in lines:
        print(line, file=sys.stderr if status or line.startswith("AUDIT NOT DONE") else sys.stdout)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
