"""Import boundaries between the top-level packages, read from the source (AST), so a violation fails here
before it becomes a cycle someone dodges with a function-local import.

- `ingestion` (the HTTP API) is a leaf: only ingestion itself, the tests, config's URL wiring (and the WSGI
  entry point's short chain for the event endpoints) and bench/ may import it. `publisher` and `routing` share
  what they need with it through `events`.
- `routing` decides where an event goes; it never talks to Kafka (that is publisher's job). Only its admin glue
  (routing/admin_preview.py) imports publisher, to read recent events for the rule preview.
- `events` (types, schema, serialization) depends on no app at all.

Every import counts, including those inside functions and under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SKIP_DIRS = {".venv", ".git", "node_modules", "__pycache__", ".cache", ".data", ".mypy_cache", ".ruff_cache"}

# Who may import `ingestion`, besides ingestion itself, tests/ and bench/.
INGESTION_IMPORTERS = {
    "config/urls.py",  # the API's routes and error handlers
    "config/wsgi.py",  # the event endpoints' short middleware chain
}


def _python_files() -> Iterator[Path]:
    for path in sorted(REPO_ROOT.rglob("*.py")):
        relative = path.relative_to(REPO_ROOT)
        if SKIP_DIRS.intersection(relative.parts) or relative.name.endswith("_pb2.py"):
            continue
        yield path


def _module_name(relative: Path) -> str:
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) for every import in the file, relative imports resolved."""
    relative = path.relative_to(REPO_ROOT)
    package = _module_name(relative).split(".")
    if relative.name != "__init__.py":
        package = package[:-1]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:  # `from publisher import replay` imports publisher.replay
                yield node.lineno, f"{module}.{alias.name}"


def _top(module: str) -> str:
    return module.partition(".")[0]


def _violations(allowed: Callable[[Path], bool], forbidden: str | Callable[[str], bool]) -> list[str]:
    """Imports, in files `allowed` selects, of modules under the top-level package `forbidden` (or that the
    predicate `forbidden` flags)."""
    flags = forbidden if callable(forbidden) else (lambda module: _top(module) == forbidden)
    found: dict[str, str] = {}
    for path in _python_files():
        relative = path.relative_to(REPO_ROOT)
        if not allowed(relative):
            continue
        for line, module in imported_modules(path):
            if flags(module):
                found.setdefault(f"{relative}:{line}", module)  # one report per import statement
    return [f"{where} imports {module}" for where, module in sorted(found.items())]


def test_publisher_and_routing_do_not_import_ingestion() -> None:
    found = _violations(lambda rel: rel.parts[0] in {"publisher", "routing"}, "ingestion")
    assert not found, "publisher/routing must get shared code from events/, not ingestion:\n" + "\n".join(found)


def test_only_config_wiring_tests_and_bench_import_ingestion() -> None:
    def checked(rel: Path) -> bool:
        return rel.parts[0] not in {"ingestion", "tests", "bench"} and rel.as_posix() not in INGESTION_IMPORTERS

    found = _violations(checked, "ingestion")
    assert not found, "ingestion is imported from outside its allowed importers:\n" + "\n".join(found)


def test_routing_does_not_import_kafka() -> None:
    def talks_to_kafka(module: str) -> bool:
        return _top(module) == "kafka" or module.startswith("publisher.kafka_gateway")

    found = _violations(lambda rel: rel.parts[0] == "routing", talks_to_kafka)
    assert not found, "routing must not talk to Kafka:\n" + "\n".join(found)


def test_routing_reads_recent_events_only_in_its_admin_glue() -> None:
    """The admin's *Preview on recent traffic* reads Kafka through publisher.recent, from routing/admin_preview.py;
    the rest of routing (the engine, the comparison) stays free of publishing."""

    def checked(rel: Path) -> bool:
        return rel.parts[0] == "routing" and rel.as_posix() != "routing/admin_preview.py"

    found = _violations(checked, "publisher")
    assert not found, "routing must not import publisher outside its admin glue:\n" + "\n".join(found)


@pytest.mark.parametrize("app", ["ingestion", "routing", "publisher", "config"])
def test_events_depends_on_no_app(app: str) -> None:
    found = _violations(lambda rel: rel.parts[0] == "events", app)
    assert not found, f"events/ is shared by the apps and must not import {app}:\n" + "\n".join(found)


def test_the_checker_sees_imports() -> None:
    """Guard against a checker that passes because it reads nothing."""
    modules = {module for _, module in imported_modules(REPO_ROOT / "ingestion" / "urls.py")}
    assert "ingestion.views" in modules
    assert sum(1 for _ in _python_files()) > 50
