"""Fast paths: every place the project reaches into another library's non-public parts or writes its wire
format by hand, fenced here so it can be switched off and checked against the versions it was verified on.

Each fast path is one module of this package with
- a docstring saying which public path it replaces, why, and what upstream change would let it go;
- `NAME` and `VERIFIED` (distribution -> version it was verified against, `importlib.metadata` spelling);
- optionally `standing_aside()`: why it is off although switched on and verified (a setting it cannot serve),
  or None;
- `enabled()`: switched on by `INGEST_FAST_PATHS` *and* every installed version is the verified one. On a
  version mismatch it logs one warning per process and returns False: callers then take the library's public
  path (`producer.send()`, `apply_async()`, Celery's default strategy, Django's handler, prometheus_client's
  own values...), which is always kept working and tested (CI runs the whole suite twice, the second time with
  `INGEST_FAST_PATHS=none`).

`INGEST_FAST_PATHS`: `all` (default), `none`, or a comma-separated list of the names in `REGISTRY`. It is read
from the environment (not Django settings) because two fast paths are installed before settings exist
(config/__init__.py); settings.py reads it too, so an unknown name fails at startup naming the variable.
Nothing in this module imports the libraries it gates; each fast path module imports only what it patches.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
from collections.abc import Iterable, Mapping
from functools import cache
from types import ModuleType

ENV = "INGEST_FAST_PATHS"

# name -> module (fastpaths.<name>): one fast path each.
REGISTRY: dict[str, str] = {
    "kafka_batches": "fastpaths.kafka_batches",
    "celery_lean_strategy": "fastpaths.celery_lean_strategy",
    "celery_handoff": "fastpaths.celery_handoff",
    "kombu_redis_transport": "fastpaths.kombu_redis_transport",
    "celery_orjson": "fastpaths.celery_orjson",
    "django_lean_handler": "fastpaths.django_lean_handler",
    "direct_single_event": "fastpaths.direct_single_event",
    "prometheus_histogram": "fastpaths.prometheus_histogram",
}

logger = logging.getLogger(__name__)


def parse(text: str) -> frozenset[str]:
    """`all` | `none` | comma list of names -> the names switched on. Unknown names raise EnvError."""
    from config.env import EnvError

    value = text.strip().lower()
    if value in ("", "all"):
        return frozenset(REGISTRY)
    if value == "none":
        return frozenset()
    names = [item.strip() for item in value.split(",") if item.strip()]
    unknown = [name for name in names if name not in REGISTRY]
    if unknown or not names:
        raise EnvError(
            f"{ENV}={text!r} names unknown fast paths ({', '.join(unknown) or 'none given'}): use all, none, "
            f"or a comma-separated list of {', '.join(REGISTRY)}"
        )
    return frozenset(names)


@cache
def switched_on() -> frozenset[str]:
    """The fast paths INGEST_FAST_PATHS switches on in this process (read once)."""
    from config.env import env_str

    return parse(env_str(ENV, "all"))


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@cache
def version_mismatches(name: str, verified: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    """Installed versions that differ from the verified ones, as `dist installed (verified V)`; logged once."""
    found = tuple(
        f"{dist} {_version(dist) or 'missing'} (verified {version})"
        for dist, version in verified
        if _version(dist) != version
    )
    if found:
        logger.warning(
            "fast path %s is off: %s; the public path runs instead",
            name,
            ", ".join(found),
            extra={"event": "fast_path_version_mismatch", "fast_path": name},
        )
    return found


_verified: dict[str, tuple[Mapping[str, str], bool]] = {}  # name -> (VERIFIED it was checked with, all match)


def gate(name: str, verified: Mapping[str, str]) -> bool:
    """What a fast path's `enabled()` returns: switched on and verified on every installed version. Some are asked
    several times per request: the version verdict is kept per name (and VERIFIED mapping) after the first."""
    if name not in switched_on():
        return False
    checked = _verified.get(name)
    if checked is None or checked[0] is not verified:
        checked = _verified[name] = (verified, not version_mismatches(name, tuple(sorted(verified.items()))))
    return checked[1]


def module(name: str) -> ModuleType:
    return importlib.import_module(REGISTRY[name])


def status() -> dict[str, tuple[bool, str]]:
    """name -> (active, why) for every fast path."""
    on = switched_on()
    result: dict[str, tuple[bool, str]] = {}
    for name in REGISTRY:
        if name not in on:
            result[name] = (False, f"switched off by {ENV}")
            continue
        fast_path = module(name)
        verified = fast_path.VERIFIED
        mismatches = version_mismatches(name, tuple(sorted(verified.items())))
        aside = getattr(fast_path, "standing_aside", lambda: None)()
        if mismatches:
            result[name] = (False, "version mismatch: " + ", ".join(mismatches))
        elif aside:
            result[name] = (False, f"standing aside: {aside}")
        else:
            result[name] = (True, "verified on " + ", ".join(f"{d} {v}" for d, v in sorted(verified.items())))
    return result


def describe() -> str:
    """One line saying which fast paths are active and why the others are not."""
    parts = [f"{name}={'on' if active else 'off'} ({why})" for name, (active, why) in status().items()]
    return "fast paths: " + "; ".join(parts)


_described = [False]


def log_once(process: str) -> None:
    """Log describe() once per process (web and worker call this at startup)."""
    if _described[0]:
        return
    _described[0] = True
    logger.info("%s: %s", process, describe(), extra={"event": "fast_paths", "active": sorted(active())})


def active() -> list[str]:
    return [name for name, (on, _) in status().items() if on]


def reset(names: Iterable[str] | None = None) -> None:
    """Forget the parsed switch (tests change INGEST_FAST_PATHS and call this). Version checks stay cached."""
    switched_on.cache_clear()
    if names is not None:
        os.environ[ENV] = ",".join(names) or "none"
        switched_on.cache_clear()
