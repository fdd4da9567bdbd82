"""Unit tests for routing.engine (no Django, no database).

Run: .venv/bin/python -m pytest -p no:django -p no:cacheprovider tests/unit/test_routing_engine.py -q
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from routing.engine import CompiledRule, RoutingDecision, RuleSet
from routing.patterns import compile_pattern


def rule(
    rule_id: int,
    name: str,
    topics: tuple[str, ...],
    *,
    pattern: dict[str, Any] | None = None,
    event_type: str = "attempt",
    priority: int = 100,
    stop: bool = False,
) -> CompiledRule:
    return CompiledRule(
        rule_id=rule_id,
        name=name,
        event_type=event_type,
        priority=priority,
        stop_processing=stop,
        topics=topics,
        matcher=compile_pattern(pattern if pattern is not None else {}),
    )


HIGH_QUALITY = {"quality": [{"numeric": [">=", 4]}]}


def test_rules_run_in_priority_order_lower_first() -> None:
    rules = RuleSet(
        [
            rule(1, "late", ("t-late",), priority=20),
            rule(2, "early", ("t-early",), priority=10),
            rule(3, "middle", ("t-middle",), priority=15),
        ]
    )
    decision = rules.route({"event_type": "attempt"})
    assert decision.matched_rules == ("early", "middle", "late")
    assert decision.topics == ("t-early", "t-middle", "t-late")


def test_priority_ties_break_by_rule_id_whatever_the_input_order() -> None:
    rules = RuleSet([rule(9, "nine", ("a",), priority=5), rule(2, "two", ("b",), priority=5), rule(4, "four", ("c",))])
    decision = rules.route({"event_type": "attempt"})
    assert decision.matched_rules == ("two", "nine", "four")
    assert decision.topics == ("b", "a", "c")


def test_each_topic_at_most_once_in_first_seen_order() -> None:
    rules = RuleSet(
        [
            rule(1, "r1", ("ml", "attempts"), priority=1),
            rule(2, "r2", ("attempts", "audit", "ml"), priority=2),
            rule(3, "r3", ("audit",), priority=3),
        ]
    )
    decision = rules.route({"event_type": "attempt"})
    assert decision.topics == ("ml", "attempts", "audit")
    assert decision.matched_rules == ("r1", "r2", "r3")


def test_stop_processing_ends_the_walk_only_when_its_rule_matches() -> None:
    rules = RuleSet(
        [
            rule(1, "stopper-no-match", ("never",), pattern={"quality": [99]}, priority=1, stop=True),
            rule(2, "ml", ("ml",), pattern=HIGH_QUALITY, priority=2, stop=True),
            rule(3, "all", ("attempts",), priority=3),
        ]
    )
    high = rules.route({"event_type": "attempt", "quality": 5})
    assert high.matched_rules == ("ml",)
    assert high.topics == ("ml",)
    low = rules.route({"event_type": "attempt", "quality": 2})
    assert low.matched_rules == ("all",)
    assert low.topics == ("attempts",)


def test_only_rules_of_the_event_type_apply() -> None:
    rules = RuleSet(
        [
            rule(1, "attempts", ("attempts",), event_type="attempt"),
            rule(
                2, "sessions", ("sessions",), event_type="session", pattern={"items_attempted": [{"numeric": [">", 0]}]}
            ),
        ]
    )
    assert rules.route({"event_type": "attempt", "items_attempted": 3}).topics == ("attempts",)
    assert rules.route({"event_type": "session", "items_attempted": 3}).topics == ("sessions",)
    assert rules.route({"event_type": "session", "items_attempted": 0}).topics == ()
    assert rules.route({"event_type": "placement"}).topics == ()


@pytest.mark.parametrize(
    "event",
    [
        {"event_type": "attempt", "quality": 1},
        {"event_type": "unknown"},
        {},
        {"event_type": None},
        {"event_type": ["attempt"]},  # not a string: unrouted, not an error
        {"event_type": {"nested": 1}},
    ],
)
def test_unrouted_events_get_an_empty_decision(event: dict[str, Any]) -> None:
    rules = RuleSet([rule(1, "ml", ("ml",), pattern=HIGH_QUALITY)])
    decision = rules.route(event)
    assert decision == RoutingDecision(topics=(), matched_rules=())
    assert not decision.routed


def test_empty_rule_set_routes_nothing() -> None:
    assert RuleSet([]).route({"event_type": "attempt"}).topics == ()
    assert len(RuleSet([])) == 0


def test_patterns_see_the_whole_event() -> None:
    rules = RuleSet(
        [
            rule(1, "completed", ("placements", "ml"), event_type="placement", pattern={"status": ["completed"]}),
            rule(2, "by-type", ("typed",), event_type="placement", pattern={"event_type": ["placement"]}),
        ]
    )
    assert rules.route({"event_type": "placement", "status": "completed"}).topics == ("placements", "ml", "typed")
    assert rules.route({"event_type": "placement", "status": "started"}).topics == ("typed",)


def test_a_matching_rule_without_topics_is_reported_but_routes_nowhere() -> None:
    decision = RuleSet([rule(1, "empty", ())]).route({"event_type": "attempt"})
    assert decision.matched_rules == ("empty",)
    assert decision.topics == ()
    assert not decision.routed


def test_rule_set_accepts_any_iterable_once() -> None:
    rules = RuleSet(rule(i, f"r{i}", (f"t{i}",), priority=-i) for i in range(3))
    assert rules.route({"event_type": "attempt"}).matched_rules == ("r2", "r1", "r0")
    assert len(rules) == 3
    assert [r.name for r in rules.rules_for("attempt")] == ["r2", "r1", "r0"]
    assert rules.rules_for("session") == ()


def test_default_rules_scenario() -> None:
    rules = RuleSet(
        [
            rule(1, "ml-quality", ("ml.training",), pattern=HIGH_QUALITY, priority=10),
            rule(2, "all-attempts", ("events.attempts",), priority=20),
            rule(
                3,
                "placements",
                ("events.placements", "ml.training"),
                event_type="placement",
                priority=10,
                pattern={"status": ["completed"]},
            ),
        ]
    )
    assert rules.route({"event_type": "attempt", "quality": 4}).topics == ("ml.training", "events.attempts")
    assert rules.route({"event_type": "attempt", "quality": 3}).topics == ("events.attempts",)
    assert rules.route({"event_type": "placement", "status": "completed"}).topics == (
        "events.placements",
        "ml.training",
    )


def test_compiled_rule_and_decision_are_frozen() -> None:
    r = rule(1, "r", ("t",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.priority = 5  # type: ignore[misc]
    decision = RuleSet([r]).route({"event_type": "attempt"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.topics = ()  # type: ignore[misc]
