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

from django.apps import apps as django_apps
from django.core.exceptions import ValidationError
from django.db import transaction

from config.redis import get_redis
from events.schema import validate_event
from routing.engine import CompiledRule, RoutingDecision, RuleSet
from routing.models import RoutingRule, Topic, validate_pattern
from routing.patterns import Matcher, PatternError, compile_pattern

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


# --------------------------------------------------------------------------------------------------- rule tester


@dataclass(frozen=True)
class RuleOutcome:
    """One rule as the tester saw it. `result`: "matched", "no match", "not evaluated" (an earlier matching
    rule had stop_processing set) or "other event type" (a single rule tested against another type's event)."""

    rule_id: int | None
    name: str
    event_type: str
    priority: int
    enabled: bool
    stop_processing: bool
    topics: tuple[str, ...]
    result: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.rule_id,
            "name": self.name,
            "event_type": self.event_type,
            "priority": self.priority,
            "enabled": self.enabled,
            "stop_processing": self.stop_processing,
            "topics": list(self.topics),
            "result": self.result,
        }


@dataclass(frozen=True)
class RoutingTestResult:
    """What the rule tester found: the engine's decision plus the walk that led to it."""

    mode: str  # "rule set" | "rule" | "pattern"
    topics: tuple[str, ...]
    matched_rules: tuple[str, ...]  # names, in evaluation order (as the engine reports them)
    stopped_by: str | None  # the matching rule with stop_processing that ended the walk
    rules: tuple[RuleOutcome, ...]  # every rule considered for the event's type, in evaluation order
    event: dict[str, Any]  # the event as routed (normalised like the API does when it is valid)
    event_errors: tuple[str, ...]  # why the API would reject this event (it is still routed as given)

    @property
    def routed(self) -> bool:
        return bool(self.topics)

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "matched_rules": list(self.matched_rules),
            "topics": list(self.topics),
            "stopped_by": self.stopped_by,
            "rules": [rule.as_dict() for rule in self.rules],
            "event": self.event,
            "event_errors": list(self.event_errors),
        }


UNSAVED_PATTERN_NAME = "(unsaved pattern)"


def _sample_event(event: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Route what a worker would route: the API's normalised event when it is valid, else the event as given."""
    checked = validate_event(event)
    if isinstance(checked, list):
        return event, tuple(str(error) for error in checked)
    return checked.data, ()


def _compiled(rule: RoutingRule, matcher: Matcher) -> CompiledRule:
    return CompiledRule(
        rule_id=rule.pk,
        name=rule.name,
        event_type=rule.event_type,
        priority=rule.priority,
        stop_processing=rule.stop_processing,
        topics=tuple(sorted((t.name for t in rule.destinations.all()), key=str)),
        matcher=matcher,
    )


def test_routing(
    *, event: dict[str, Any], rule_id: int | None = None, pattern: dict[str, Any] | None = None
) -> RoutingTestResult:
    """Evaluate a sample event with the routing engine, as a worker would, without publishing anything.

    - neither `rule_id` nor `pattern`: the whole rule set in force (enabled rules, read fresh from the database);
    - `rule_id`: that rule alone (even when disabled), with its event type, pattern and destinations;
    - `pattern`: an unsaved pattern — alone, or in place of the pattern of rule `rule_id`.

    Raises django.core.exceptions.ValidationError for a bad pattern (the same messages as saving a rule) and
    RoutingRule.DoesNotExist for an unknown rule_id.
    """
    matcher: Matcher | None = None
    if pattern is not None:
        validate_pattern(pattern)
        matcher = compile_rule_pattern(pattern)
    routed_event, event_errors = _sample_event(event)
    event_type = routed_event.get("event_type")
    mode, rule_set, candidates, enabled = _rules_under_test(rule_id, matcher, event_type)
    decision = rule_set.route(routed_event)
    outcomes, stopped_by = _rule_outcomes(candidates, event_type, set(decision.matched_rules), enabled)
    return RoutingTestResult(
        mode=mode,
        topics=decision.topics,
        matched_rules=decision.matched_rules,
        stopped_by=stopped_by,
        rules=outcomes,
        event=routed_event,
        event_errors=event_errors,
    )


def _rules_under_test(
    rule_id: int | None, matcher: Matcher | None, event_type: Any
) -> tuple[str, RuleSet, tuple[CompiledRule, ...], dict[int, bool]]:
    """(mode, the rule set to route with, the rules to report on, enabled flags of saved rules by id)."""
    if rule_id is not None:
        rule = RoutingRule.objects.prefetch_related("destinations").get(pk=rule_id)
        mode = "rule" if matcher is None else "pattern"
        if matcher is None:
            try:
                matcher = compile_rule_pattern(rule.pattern)
            except PatternError as exc:  # saved patterns are validated; an old row could still fail
                raise ValidationError(f"Invalid pattern: {exc}", code="invalid") from None
        candidates: tuple[CompiledRule, ...] = (_compiled(rule, matcher),)
        return mode, RuleSet(candidates), candidates, {rule.pk: rule.enabled}
    if matcher is not None:
        compiled = CompiledRule(
            rule_id=0,
            name=UNSAVED_PATTERN_NAME,
            event_type=event_type if isinstance(event_type, str) else "",
            priority=0,
            stop_processing=False,
            topics=(),
            matcher=matcher,
        )
        return "pattern", RuleSet((compiled,)), (compiled,), {}
    rule_set = load_snapshot().rule_set
    return "rule set", rule_set, rule_set.rules_for(event_type) if isinstance(event_type, str) else (), {}


def _rule_outcomes(
    candidates: tuple[CompiledRule, ...], event_type: Any, matched: set[str], enabled: dict[int, bool]
) -> tuple[tuple[RuleOutcome, ...], str | None]:
    """What happened to each rule, in evaluation order, and the rule whose stop-processing ended routing."""
    stopped_by: str | None = None
    outcomes: list[RuleOutcome] = []
    for candidate in candidates:
        if candidate.event_type != event_type:
            result = "other event type"
        elif stopped_by is not None:
            result = "not evaluated"
        elif candidate.name in matched:
            result = "matched"
            if candidate.stop_processing:
                stopped_by = candidate.name
        else:
            result = "no match"
        outcomes.append(
            RuleOutcome(
                rule_id=candidate.rule_id or None,
                name=candidate.name,
                event_type=candidate.event_type,
                priority=candidate.priority,
                enabled=enabled.get(candidate.rule_id, True),
                stop_processing=candidate.stop_processing,
                topics=candidate.topics,
                result=result,
            )
        )
    return tuple(outcomes), stopped_by


test_routing.__test__ = False  # type: ignore[attr-defined]  # not a pytest test, whatever imports it


# --------------------------------------------------------------------------------------------------- permissions

ROUTING_EDITORS_GROUP = "Routing editors"
# model name -> actions granted to routing editors. History is read-only for everyone: it is written by saves.
ROUTING_EDITOR_PERMISSIONS: dict[str, tuple[str, ...]] = {
    "topic": ("add", "change", "delete", "view"),
    "routingrule": ("add", "change", "delete", "view"),
    "historicaltopic": ("view",),
    "historicalroutingrule": ("view",),
    "historicalroutingrule_destinations": ("view",),
}


def ensure_routing_editors_group(apps: Any = None) -> Any:
    """Create (or complete) the "Routing editors" group. `apps` is a migration's app registry; the permission
    rows are created here when missing, because Django only adds them after all migrations ran."""
    registry = django_apps if apps is None else apps
    group_model = registry.get_model("auth", "Group")
    permission_model = registry.get_model("auth", "Permission")
    content_type_model = registry.get_model("contenttypes", "ContentType")
    permissions = []
    for model_name, actions in ROUTING_EDITOR_PERMISSIONS.items():
        verbose_name = registry.get_model("routing", model_name)._meta.verbose_name_raw
        content_type, _ = content_type_model.objects.get_or_create(app_label="routing", model=model_name)
        for action in actions:
            permission, _ = permission_model.objects.get_or_create(
                content_type=content_type,
                codename=f"{action}_{model_name}",
                defaults={"name": f"Can {action} {verbose_name}"},
            )
            permissions.append(permission)
    group, _ = group_model.objects.get_or_create(name=ROUTING_EDITORS_GROUP)
    group.permissions.add(*permissions)
    return group
