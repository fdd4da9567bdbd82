"""Unit tests for the comparisons behind *Preview on recent traffic* (routing.preview), on plain event dicts."""

from __future__ import annotations

from typing import Any

from routing.engine import CompiledRule, RuleSet
from routing.patterns import compile_pattern
from routing.preview import compare_rule_sets, compare_rules


def rule(rule_id: int, topics: tuple[str, ...], pattern: dict[str, Any], *, stop: bool = False) -> CompiledRule:
    return CompiledRule(
        rule_id=rule_id,
        name=f"rule {rule_id}",
        event_type="attempt",
        priority=rule_id,
        stop_processing=stop,
        topics=topics,
        matcher=compile_pattern(pattern),
    )


def attempts(*qualities: int) -> list[dict[str, Any]]:
    return [{"event_type": "attempt", "event_id": f"e{i}", "quality": q} for i, q in enumerate(qualities)]


GOOD = {"quality": [{"numeric": [">=", 4]}]}


def test_rule_comparison_counts_both_differences_and_keeps_the_first_examples() -> None:
    events = attempts(5, 3, 3, 3, 3, 4, 5) + [{"event_type": "session", "quality": 3}]
    before = rule(1, ("t",), GOOD)
    after = rule(1, ("t",), {"quality": [{"numeric": [">=", 3, "<", 5]}]})

    change = compare_rules(events, before=before, after=after, examples=3)

    assert (change.events, change.matched_before, change.matched_after) == (8, 3, 5)
    assert change.gained.count == 4 and [e["event_id"] for e in change.gained.examples] == ["e1", "e2", "e3"]
    assert change.lost.count == 2 and [e["event_id"] for e in change.lost.examples] == ["e0", "e6"]


def test_new_rule_has_nothing_before() -> None:
    change = compare_rules(attempts(1, 5), before=None, after=rule(9, ("t",), GOOD))
    assert (change.matched_before, change.matched_after, change.gained.count, change.lost.count) == (0, 1, 1, 0)


def test_rule_set_comparison_per_topic_with_stop_processing_and_unrouted() -> None:
    events = attempts(5, 1, 4)
    good, every = rule(1, ("ml",), GOOD), rule(2, ("all",), {})
    before = RuleSet([good, every])
    after = RuleSet([rule(1, ("ml",), GOOD, stop=True)])  # the catch-all deleted, the good rule stops the walk

    change = compare_rule_sets(events, before=before, after=after)

    topics = {t.topic: t for t in change.topics}
    assert (topics["all"].before, topics["all"].after, topics["all"].lost.count) == (3, 0, 3)
    assert not topics["ml"].changed and (topics["ml"].before, topics["ml"].after) == (2, 2)
    assert (change.unrouted_before, change.unrouted_after) == (0, 1)
    assert change.changed
    assert not compare_rule_sets(events, before=before, after=before).changed
