"""Rule-set evaluation: which topics an event goes to. Pure (no Django, no I/O), built once per rules version."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from routing.patterns import Matcher

__all__ = ["CompiledRule", "RoutingDecision", "RuleSet"]


@dataclass(frozen=True, slots=True)
class CompiledRule:
    rule_id: int
    name: str
    event_type: str
    priority: int
    stop_processing: bool
    topics: tuple[str, ...]
    matcher: Matcher


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    topics: tuple[str, ...]  # each topic once, in the order the matching rules named them
    matched_rules: tuple[str, ...]  # rule names in evaluation order

    @property
    def routed(self) -> bool:
        return bool(self.topics)


_UNROUTED = RoutingDecision(topics=(), matched_rules=())


class RuleSet:
    """Enabled rules grouped by event type, each group in evaluation order: priority (lower first), then rule_id."""

    __slots__ = ("_by_type",)

    def __init__(self, rules: Iterable[CompiledRule]) -> None:
        groups: dict[str, list[CompiledRule]] = {}
        for rule in rules:
            groups.setdefault(rule.event_type, []).append(rule)
        self._by_type: dict[str, tuple[CompiledRule, ...]] = {
            event_type: tuple(sorted(group, key=lambda r: (r.priority, r.rule_id)))
            for event_type, group in groups.items()
        }

    def rules_for(self, event_type: str) -> tuple[CompiledRule, ...]:
        return self._by_type.get(event_type, ())

    def rules(self) -> tuple[CompiledRule, ...]:
        return tuple(rule for group in self._by_type.values() for rule in group)

    def __len__(self) -> int:
        return sum(len(group) for group in self._by_type.values())

    def route(self, event: Mapping[str, Any]) -> RoutingDecision:
        event_type = event.get("event_type")
        # Only a string can name a type; anything else (missing, null, a list) is simply unrouted.
        rules = self._by_type.get(event_type) if isinstance(event_type, str) else None
        if not rules:
            return _UNROUTED
        topics: list[str] = []
        seen: set[str] = set()
        matched: list[str] = []
        for rule in rules:
            if not rule.matcher.matches(event):
                continue
            matched.append(rule.name)
            for topic in rule.topics:
                if topic not in seen:
                    seen.add(topic)
                    topics.append(topic)
            if rule.stop_processing:
                break
        if not matched:
            return _UNROUTED
        return RoutingDecision(topics=tuple(topics), matched_rules=tuple(matched))
