"""Outside fastpaths/, no module touches another library's non-public names (DESIGN.md, "Stack"; fastpaths/).

An AST check of every project module but fastpaths/ and tests/ (tests may look inside what they test). It flags:
- importing a name (or a module) starting with `_` from a third-party package;
- `X._name` (or getattr/hasattr/setattr/delattr(X, "_name")) where X is, or is reached from, a third-party import;
- in a class with a third-party class in its MRO (resolved by importing the module): `self._name`, `cls._name`,
  `super()._name` and `def _name` when a third-party class of the MRO defines `_name` (overriding or using its
  private parts), which the project's own private names never do;
- `X._name` on anything else (a parameter, a call's result) when no project module defines `_name` at all: then
  it can only be someone else's.
Dunders and the documented underscore APIs in PUBLIC_UNDERSCORE are not private. The standard library is out of
scope (sys._getframe, os._exit...): third party means neither the project nor the standard library.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXCLUDED_DIRS = {".venv", ".git", ".data", ".cache", "node_modules", "fastpaths", "tests"}
# Documented as public despite the underscore: Django's Model _meta API and default managers, namedtuple's API,
# django-simple-history's `instance._history_user` ("Recording which user changed a model").
PUBLIC_UNDERSCORE = {
    "_meta",
    "_default_manager",
    "_base_manager",
    "_replace",
    "_asdict",
    "_fields",
    "_make",
    "_history_user",
}
GENERATED = ("_pb2.py", "_pb2.pyi")  # protoc's output: protobuf's own code, regenerated, never edited
ATTRIBUTE_FUNCTIONS = {"getattr", "hasattr", "setattr", "delattr"}


def _project_packages() -> set[str]:
    names = {path.parent.name for path in ROOT.glob("*/__init__.py")}
    names |= {path.stem for path in ROOT.glob("*.py")}
    return names


PROJECT = _project_packages()


def _is_private(name: str) -> bool:
    return (
        name.startswith("_") and not (name.startswith("__") and name.endswith("__")) and name not in PUBLIC_UNDERSCORE
    )


def _third_party(module: str) -> bool:
    top = module.split(".")[0]
    return bool(top) and top not in PROJECT and top not in sys.stdlib_module_names and top != "__future__"


def project_files() -> list[Path]:
    files = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).parts
        if not any(part in EXCLUDED_DIRS for part in parts[:-1]) and not path.name.endswith(GENERATED):
            files.append(path)
    return files


def _own_names(tree: ast.AST) -> Iterator[str]:
    """Private names a project module defines: functions, classes, variables, arguments, self/cls attributes."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield node.name
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            yield node.id
        elif isinstance(node, ast.arg):
            yield node.arg
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id in ("self", "cls")
        ):
            yield node.attr
        elif isinstance(node, ast.alias):
            yield (node.asname or node.name).split(".")[0]


def own_private_names(files: list[Path]) -> frozenset[str]:
    names: set[str] = set()
    for path in files:
        names.update(name for name in _own_names(ast.parse(path.read_text(), str(path))) if _is_private(name))
    return frozenset(names)


@dataclass(frozen=True)
class Violation:
    where: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.where}:{self.line}: {self.what}"


def _third_party_defines(cls: type | None, name: str) -> str | None:
    """The third-party class in `cls`'s MRO that defines `name`, as `module.Class`, or None."""
    if cls is None:
        return None
    for klass in inspect.getmro(cls):
        module = getattr(klass, "__module__", "") or ""
        if not _third_party(module):
            continue
        if name in vars(klass) or name in (getattr(klass, "__slots__", ()) or ()):
            return f"{module}.{klass.__qualname__}"
    return None


class _Checker(ast.NodeVisitor):
    def __init__(self, where: str, namespace: dict[str, Any] | None, own: frozenset[str]) -> None:
        self.where = where
        self.namespace = namespace or {}
        self.own = own
        self.imports: dict[str, str] = {}  # local name -> module path (or module.attribute) it was bound to
        self.classes: list[type | None] = []
        self.found: list[Violation] = []

    def report(self, node: ast.AST, what: str) -> None:
        self.found.append(Violation(self.where, getattr(node, "lineno", 0), what))

    # imports
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if _third_party(alias.name) and any(_is_private(part) for part in alias.name.split(".")):
                self.report(node, f"imports private module {alias.name}")
            if alias.asname:
                self.imports[alias.asname] = alias.name
            else:
                top = alias.name.split(".")[0]
                self.imports[top] = top

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = "." * node.level + (node.module or "")
        if node.level or not _third_party(module):
            for alias in node.names:  # the project's own (or the standard library's): remembered, never flagged
                self.imports[alias.asname or alias.name] = f"{module}.{alias.name}"
            return
        if any(_is_private(part) for part in module.split(".")):
            self.report(node, f"imports from private module {module}")
        for alias in node.names:
            if _is_private(alias.name):
                self.report(node, f"imports private name {alias.name} from {module}")
            self.imports[alias.asname or alias.name] = f"{module}.{alias.name}"

    # classes
    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        cls = self.namespace.get(node.name) if not self.classes else None
        self.classes.append(cls if isinstance(cls, type) else None)
        for item in node.body:
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and _is_private(item.name):
                owner = _third_party_defines(self.classes[-1], item.name)
                if owner:
                    self.report(item, f"overrides {owner}.{item.name}")
        self.generic_visit(node)
        self.classes.pop()

    # attribute access
    def _root(self, node: ast.expr) -> str | None:
        while isinstance(node, ast.Attribute):
            node = node.value
        return node.id if isinstance(node, ast.Name) else None

    def _check(self, node: ast.AST, target: ast.expr, name: str) -> None:
        if not _is_private(name):
            return
        current = self.classes[-1] if self.classes else None
        is_super = isinstance(target, ast.Call) and isinstance(target.func, ast.Name) and target.func.id == "super"
        if is_super or (isinstance(target, ast.Name) and target.id in ("self", "cls")):
            owner = _third_party_defines(current, name)
            if owner:
                self.report(node, f"uses {owner}.{name}")
            elif name not in self.own and not is_super:
                self.report(node, f"uses {name}, which no project module defines")
            return
        root = self._root(target)
        if root is not None and root in self.imports:
            if _third_party(self.imports[root]):
                self.report(node, f"uses {name} of {self.imports[root]}")
            return  # the project's own modules, or the standard library
        if name not in self.own:
            self.report(node, f"uses {name}, which no project module defines")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self._check(node, node.value, node.attr)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if (
            isinstance(node.func, ast.Name)
            and node.func.id in ATTRIBUTE_FUNCTIONS
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            self._check(node, node.args[0], node.args[1].value)
        self.generic_visit(node)


def check_source(source: str, *, where: str, namespace: dict[str, Any] | None, own: frozenset[str]) -> list[Violation]:
    checker = _Checker(where, namespace, own)
    checker.visit(ast.parse(source, where))
    return checker.found


def _module_namespace(path: Path) -> dict[str, Any] | None:
    relative = path.relative_to(ROOT).with_suffix("")
    name = ".".join(relative.parts).removesuffix(".__init__")
    if "migrations" in relative.parts or name in ("manage",):
        return None
    try:
        return vars(importlib.import_module(name))
    except Exception:  # a script that needs arguments or services: checked without its classes' MROs
        return None


def test_no_module_outside_fastpaths_touches_another_librarys_private_names() -> None:
    files = project_files()
    own = own_private_names(files)
    found = [
        violation
        for path in files
        for violation in check_source(
            path.read_text(), where=str(path.relative_to(ROOT)), namespace=_module_namespace(path), own=own
        )
    ]
    assert not found, "move these into fastpaths/ (one fast path module, version-gated):\n" + "\n".join(map(str, found))


# The check itself: what it must catch (the shapes fastpaths/ holds) and what it must let through (our own names).

CAUGHT = {
    "private import": "from kombu.transport.redis import _after_fork_cleanup_channel\n",
    "private attribute of a parameter": "def f(message):\n    message._decoded_cache = None\n",
    "private attribute through a third-party module": "import kafka\nkafka._something.x = 1\n",
    "getattr with a private name": "def f(producer):\n    return getattr(producer, '_transaction_manager', None)\n",
    "histogram internals": "def f(histogram):\n    histogram._sum.inc(1)\n",
}


@pytest.mark.parametrize("source", list(CAUGHT.values()), ids=list(CAUGHT))
def test_the_check_catches(source: str) -> None:
    assert check_source(source, where="sample.py", namespace=None, own=frozenset({"_mine"}))


def test_the_check_catches_overriding_and_using_a_third_party_classes_private_parts() -> None:
    from django.core.handlers.wsgi import WSGIHandler
    from kombu.transport import redis as kombu_redis

    source = (
        "class Channel(kombu_redis.Channel):\n"
        "    def _create_client(self, asynchronous=False):\n"
        "        return super()._create_client(asynchronous)\n"
        "class Handler(WSGIHandler):\n"
        "    def load_middleware(self, is_async=False):\n"
        "        self._view_middleware = []\n"
    )
    namespace = {
        "Channel": type("Channel", (kombu_redis.Channel,), {}),
        "Handler": type("Handler", (WSGIHandler,), {}),
    }
    found = check_source(source, where="sample.py", namespace=namespace, own=frozenset({"_view_middleware"}))
    assert [v.line for v in found] == [2, 3, 6]


def test_the_check_lets_the_projects_own_private_names_through() -> None:
    source = (
        "from publisher import kafka_gateway\n"
        "import os\n"
        "from kafka.partitioner.default import DefaultPartitioner\n"
        "_cache = None\n"
        "class Partitioner(DefaultPartitioner):\n"
        "    _MAX = 3\n"
        "    def __init__(self):\n"
        "        self._hashes = {}\n"
        "    def _helper(self):\n"
        "        return self._hashes, self._MAX, self.__dict__\n"
        "def f(row, model):\n"
        "    kafka_gateway._topic_limits.clear()\n"
        "    os._exit(0)\n"
        "    return row._mine, model._meta.label, getattr(row, '_mine')\n"
    )
    from kafka.partitioner.default import DefaultPartitioner

    namespace = {"Partitioner": type("Partitioner", (DefaultPartitioner,), {})}
    own = frozenset({"_mine", *(name for name in _own_names(ast.parse(source)) if _is_private(name))})
    assert check_source(source, where="sample.py", namespace=namespace, own=own) == []
