"""The seed's default topics and routing rules, from the configured topic names. Used by the data migration
(with historical models) and by tests that need the defaults back after truncating tables."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from routing.models import RoutingRule, Topic


def default_topics() -> list[dict[str, str]]:
    return [
        {"name": settings.KAFKA_TOPIC_ATTEMPTS, "description": "Every learner attempt."},
        {"name": settings.KAFKA_TOPIC_SESSIONS, "description": "Learning sessions with at least one item."},
        {"name": settings.KAFKA_TOPIC_PLACEMENTS, "description": "Completed placement tests."},
        {"name": settings.KAFKA_TOPIC_ACTIVITIES, "description": "Every activity event."},
        {"name": settings.KAFKA_TOPIC_ML_TRAINING, "description": "Training data: good attempts, placements."},
    ]


def default_rules() -> list[dict[str, Any]]:
    return [
        {
            "name": "High-quality attempts to ML training",
            "event_type": "attempt",
            "pattern": {"quality": [{"numeric": [">=", 4]}]},
            "topics": [settings.KAFKA_TOPIC_ML_TRAINING],
            "priority": 10,
        },
        {
            "name": "All attempts",
            "event_type": "attempt",
            "pattern": {},
            "topics": [settings.KAFKA_TOPIC_ATTEMPTS],
            "priority": 20,
        },
        {
            "name": "Sessions with attempted items",
            "event_type": "session",
            "pattern": {"items_attempted": [{"numeric": [">", 0]}]},
            "topics": [settings.KAFKA_TOPIC_SESSIONS],
            "priority": 10,
        },
        {
            "name": "Completed placements",
            "event_type": "placement",
            "pattern": {"completed": [True]},
            "topics": [settings.KAFKA_TOPIC_PLACEMENTS, settings.KAFKA_TOPIC_ML_TRAINING],
            "priority": 10,
        },
        {
            "name": "All activities",
            "event_type": "activity",
            "pattern": {},
            "topics": [settings.KAFKA_TOPIC_ACTIVITIES],
            "priority": 10,
        },
    ]


def seed_default_routing(topic_model: Any = None, rule_model: Any = None) -> None:
    """Create the default topics and rules that are missing; never touches existing ones."""
    if topic_model is None or rule_model is None:
        topic_model, rule_model = Topic, RoutingRule
    topics = {}
    for spec in default_topics():
        topics[spec["name"]], _ = topic_model.objects.get_or_create(
            name=spec["name"], defaults={"description": spec["description"]}
        )
    for spec in default_rules():
        rule, created = rule_model.objects.get_or_create(
            name=spec["name"],
            defaults={
                "event_type": spec["event_type"],
                "pattern": spec["pattern"],
                "priority": spec["priority"],
                "description": "Default rule from the seed.",
            },
        )
        if created:
            rule.destinations.set([topics[name] for name in spec["topics"]])
