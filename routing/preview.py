"""What an unsaved rule edit would change, measured on events given to us (the admin reads recent ones from
Kafka through publisher.recent; routing itself knows nothing of Kafka).

Two comparisons, both with the same engine the workers use:
- the rule's own match: the edited rule (event type + pattern) against the saved one: events matched now but
  not before, and the reverse;
- the whole rule set: every enabled rule as saved, against the same set with the edit applied (the edited rule
  replacing the saved one, or added, or gone when disabled): per destination topic, events gained and lost.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from routing.engine import CompiledRule, RuleSet
from routing.models import RoutingRule, validate_pattern
from routing.services import compile_rule_pattern, load_snapshot

EXAMPLES: Final = 3  # examples shown of each difference


@dataclass(frozen=True)
class Difference:
    count: int
    examples: tuple[dict[str, Any], ...]

    @property
    def examples_json(self) -> list[str]:
        return [json.dumps(e, ensure_ascii=False, sort_keys=True, default=str) for e in self.examples]


class _Tally:
    __slots__ = ("count", "examples", "limit")

    def __init__(self, limit: int) -> None:
        self.count = 0
        self.examples: list[dict[str, Any]] = []
        self.limit = limit

    def add(self, event: Mapping[str, Any]) -> None:
        self.count += 1
        if len(self.examples) < self.limit:
            self.examples.append(dict(event))

    def result(self) -> Difference:
        return Difference(count=self.count, examples=tuple(self.examples))


@dataclass(frozen=True)
class PatternChange:
    events: int  # events compared
    matched_before: int  # by the saved rule (0 for a new rule)
    matched_after: int  # by the edited rule
    gained: Difference  # matched now, not before
    lost: Difference  # matched before, not now


@dataclass(frozen=True)
class TopicChange:
    topic: str
    before: int
    after: int
    gained: Difference  # sent to the topic after the edit, not before
    lost: Difference  # sent to the topic before the edit, not after

    @property
    def changed(self) -> bool:
        return bool(self.gained.count or self.lost.count)


@dataclass(frozen=True)
class RuleSetChange:
    events: int
    topics: tuple[TopicChange, ...]  # every topic either rule set sends one of the events to, by name
    unrouted_before: int
    unrouted_after: int

    @property
    def changed(self) -> bool:
        return any(topic.changed for topic in self.topics)


def _matches(rule: CompiledRule | None, event: Mapping[str, Any]) -> bool:
    return rule is not None and event.get("event_type") == rule.event_type and rule.matcher.matches(event)


def compare_rules(
    events: Iterable[Mapping[str, Any]],
    *,
    before: CompiledRule | None,
    after: CompiledRule,
    examples: int = EXAMPLES,
) -> PatternChange:
    """The edited rule's matches against the saved rule's (`before` None: a rule not saved yet)."""
    total = matched_before = matched_after = 0
    gained, lost = _Tally(examples), _Tally(examples)
    for event in events:
        total += 1
        was, now = _matches(before, event), _matches(after, event)
        matched_before += was
        matched_after += now
        if now and not was:
            gained.add(event)
        elif was and not now:
            lost.add(event)
    return PatternChange(total, matched_before, matched_after, gained.result(), lost.result())


def compare_rule_sets(
    events: Iterable[Mapping[str, Any]], *, before: RuleSet, after: RuleSet, examples: int = EXAMPLES
) -> RuleSetChange:
    total = unrouted_before = unrouted_after = 0
    counts: dict[str, list[int]] = {}  # topic -> [before, after]
    gained: dict[str, _Tally] = {}
    lost: dict[str, _Tally] = {}
    for event in events:
        total += 1
        old, new = set(before.route(event).topics), set(after.route(event).topics)
        unrouted_before += not old
        unrouted_after += not new
        for topic in old | new:
            tally = counts.setdefault(topic, [0, 0])
            tally[0] += topic in old
            tally[1] += topic in new
        for topic in new - old:
            gained.setdefault(topic, _Tally(examples)).add(event)
        for topic in old - new:
            lost.setdefault(topic, _Tally(examples)).add(event)
    empty = Difference(0, ())
    topics = tuple(
        TopicChange(
            topic=topic,
            before=counts[topic][0],
            after=counts[topic][1],
            gained=gained[topic].result() if topic in gained else empty,
            lost=lost[topic].result() if topic in lost else empty,
        )
        for topic in sorted(counts)
    )
    return RuleSetChange(total, topics, unrouted_before, unrouted_after)


# ----------------------------------------------------------------------------------------- planning a preview


@dataclass(frozen=True)
class RuleEdit:
    """A rule as the form holds it, not saved. `rule_id` None: a new rule."""

    rule_id: int | None
    name: str
    event_type: str
    pattern: dict[str, Any]
    topics: tuple[str, ...]
    priority: int
    enabled: bool
    stop_processing: bool


@dataclass(frozen=True)
class PreviewPlan:
    saved: CompiledRule | None  # the rule as saved, enabled or not (None: a new rule)
    edited: CompiledRule
    before: RuleSet  # the enabled rules as saved
    after: RuleSet  # the same with the edit applied
    event_types: tuple[str, ...]  # the types whose events can change: the edited rule's and the saved one's
    source_topics: tuple[str, ...]  # where those types' recent events are: the saved rule set's destinations
    topic_formats: dict[str, str]


def plan_preview(*, edit: RuleEdit) -> PreviewPlan:
    """Raises ValidationError for a bad pattern (the messages saving would give), RoutingRule.DoesNotExist for
    an unknown rule_id."""
    validate_pattern(edit.pattern)
    edited = CompiledRule(
        rule_id=edit.rule_id or 0,
        name=edit.name or "(new rule)",
        event_type=edit.event_type,
        priority=edit.priority,
        stop_processing=edit.stop_processing,
        topics=tuple(sorted(edit.topics)),
        matcher=compile_rule_pattern(edit.pattern),
    )
    saved: CompiledRule | None = None
    if edit.rule_id is not None:
        rule = RoutingRule.objects.prefetch_related("destinations").get(pk=edit.rule_id)
        saved = CompiledRule(
            rule_id=rule.pk,
            name=rule.name,
            event_type=rule.event_type,
            priority=rule.priority,
            stop_processing=rule.stop_processing,
            topics=tuple(sorted(t.name for t in rule.destinations.all())),
            matcher=compile_rule_pattern(rule.pattern),
        )
    snapshot = load_snapshot()
    before = snapshot.rule_set
    event_types = tuple(dict.fromkeys([edited.event_type, *([saved.event_type] if saved else [])]))
    kept = [rule for rule in before.rules() if edit.rule_id is None or rule.rule_id != edit.rule_id]
    after = RuleSet([*kept, edited] if edit.enabled else kept)
    return PreviewPlan(
        saved=saved,
        edited=edited,
        before=before,
        after=after,
        event_types=event_types,
        source_topics=source_topics(before, event_types),
        topic_formats=snapshot.topic_formats,
    )


def source_topics(rule_set: RuleSet, event_types: Sequence[str]) -> tuple[str, ...]:
    """The topics the rules in force send these types to: where their recent events are. Events no enabled rule
    routes were never written to Kafka, so no preview can count them."""
    names: dict[str, None] = {}
    for event_type in event_types:
        for rule in rule_set.rules_for(event_type):
            names.update(dict.fromkeys(rule.topics))
    return tuple(sorted(names))


@dataclass(frozen=True)
class Preview:
    rule: PatternChange
    rule_set: RuleSetChange


def preview(events: Sequence[Mapping[str, Any]], *, plan: PreviewPlan, examples: int = EXAMPLES) -> Preview:
    return Preview(
        rule=compare_rules(events, before=plan.saved, after=plan.edited, examples=examples),
        rule_set=compare_rule_sets(events, before=plan.before, after=plan.after, examples=examples),
    )
