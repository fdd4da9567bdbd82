"""Routing services: the compiled rule set each process keeps, and how a change in the admin reaches it.

Every save or delete of a rule or topic bumps a version number in Redis (after the transaction commits).
Processes keep their compiled RuleSet and look at that number at most every RULES_CHECK_INTERVAL seconds, so
a change applies everywhere within about a second, with one cheap GET per interval and no database query per
event. If Redis is unreachable, processes fall back to reloading from the database on the same interval.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from config.redis import get_redis
from routing.engine import CompiledRule, RoutingDecision, RuleSet
from routing.models import RoutingRule, Topic
from routing.patterns import Matcher, compile_pattern

logger = logging.getLogger(__name__)

RULES_VERSION_KEY = "routing:rules-version"
RULES_CHECK_INTERVAL = 0.5


def compile_rule_pattern(pattern: Any) -> Matcher:
    """`{}` (or nothing) matches every event of the rule's type."""
    return compile_pattern(pattern or {})


@dataclass(frozen=True)
class RoutingSnapshot:
    version: str
    rule_set: RuleSet
    topic_formats: dict[str, str]

    def route(self, event: Mapping[str, Any]) -> RoutingDecision:
        return self.rule_set.route(event)


_snapshot: RoutingSnapshot | None = None
_checked_at = 0.0
_lock = threading.Lock()


def load_snapshot(*, version: str = "") -> RoutingSnapshot:
    """Read enabled rules and all topics from the database and compile them."""
    rules: list[CompiledRule] = []
    queryset = RoutingRule.objects.filter(enabled=True).prefetch_related("destinations").order_by("priority", "id")
    for rule in queryset:
        try:
            matcher = compile_rule_pattern(rule.pattern)
        except ValueError:
            # Saved patterns are validated; one that no longer compiles must not stop all routing.
            logger.exception("routing rule %s has an invalid pattern; skipped", rule.name)
            continue
        topics = tuple(sorted((t.name for t in rule.destinations.all()), key=str))
        rules.append(
            CompiledRule(
                rule_id=rule.pk,
                name=rule.name,
                event_type=rule.event_type,
                priority=rule.priority,
                stop_processing=rule.stop_processing,
                topics=topics,
                matcher=matcher,
            )
        )
    formats = dict(Topic.objects.values_list("name", "format"))
    return RoutingSnapshot(version=version, rule_set=RuleSet(rules), topic_formats=formats)


def _read_version() -> str | None:
    try:
        raw = get_redis().get(RULES_VERSION_KEY)
    except Exception:  # Redis down: routing must go on; fall back to periodic reloads
        logger.warning("routing: cannot read rules version from Redis; reloading from the database")
        return None
    return raw.decode() if isinstance(raw, bytes) else "0"


def current_routing() -> RoutingSnapshot:
    """The rule set in force, refreshed when the version in Redis changed (checked at most twice a second)."""
    global _snapshot, _checked_at
    now = time.monotonic()
    snapshot = _snapshot
    if snapshot is not None and now - _checked_at < RULES_CHECK_INTERVAL:
        return snapshot
    with _lock:
        if _snapshot is not None and now - _checked_at < RULES_CHECK_INTERVAL:
            return _snapshot
        version = _read_version()
        if _snapshot is None or version is None or version != _snapshot.version:
            _snapshot = load_snapshot(version=version or "")
        _checked_at = time.monotonic()
        return _snapshot


def invalidate_local_cache() -> None:
    global _snapshot
    with _lock:
        _snapshot = None


def bump_rules_version() -> None:
    """Tell every process that rules changed. Runs after commit so nobody reloads the old rows."""

    def _bump() -> None:
        try:
            get_redis().incr(RULES_VERSION_KEY)
        except Exception:
            logger.exception("routing: could not bump the rules version; processes pick the change up on reload")
        invalidate_local_cache()

    transaction.on_commit(_bump)


def route_event(event: Mapping[str, Any]) -> RoutingDecision:
    return current_routing().route(event)


def topic_names() -> list[str]:
    return list(Topic.objects.order_by("name").values_list("name", flat=True))
