from __future__ import annotations

import re
from typing import Any

import orjson
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils.module_loading import import_string
from simple_history.models import HistoricalRecords

from events.limits import EVENT_TYPES
from routing.patterns import MAX_JSON_NESTING, MAX_PATTERN_CHARS, PatternError, compile_pattern, json_depth

TOPIC_NAME_RE = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
# Kafka's internal topics and our dead-letter topic are never routing destinations.
RESERVED_TOPICS = frozenset({"dlq.events"})


def validate_topic_name(name: str) -> None:
    if not TOPIC_NAME_RE.match(name or ""):
        raise ValidationError(
            "Topic names use only letters, digits, '.', '_' and '-', 1 to 249 characters.", code="invalid"
        )
    if name in {".", ".."}:
        raise ValidationError("'.' and '..' are not valid Kafka topic names.", code="invalid")
    if name.startswith("__") or name in RESERVED_TOPICS:
        raise ValidationError(f"'{name}' is reserved (Kafka internal or dead-letter topic).", code="reserved")


def validate_pattern(pattern: Any) -> None:
    if json_depth(pattern) > MAX_JSON_NESTING:  # before orjson, whose own limit has a vaguer message
        raise ValidationError(f"Pattern is nested deeper than {MAX_JSON_NESTING} levels.", code="invalid_pattern")
    try:
        text = orjson.dumps(pattern).decode()
    except TypeError as exc:
        raise ValidationError(f"Pattern is not plain JSON: {exc}", code="invalid_pattern") from None
    if len(text) > MAX_PATTERN_CHARS:
        raise ValidationError(
            f"Pattern is {len(text)} characters long; the limit is {MAX_PATTERN_CHARS}.", code="invalid_pattern"
        )
    try:
        compile_pattern(pattern)
    except PatternError as exc:
        raise ValidationError(f"Invalid pattern: {exc}", code="invalid_pattern") from None


class Topic(models.Model):
    class Format(models.TextChoices):
        JSON = "json", "JSON"
        PROTOBUF = "protobuf", "Protobuf"

    name = models.CharField(max_length=249, unique=True, validators=[validate_topic_name])
    format = models.CharField(max_length=16, choices=Format.choices, default=Format.JSON)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    history = HistoricalRecords()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        """A destination must already exist on the cluster: the broker never auto-creates topics, so a typo
        here would otherwise dead-letter every event routed to it. The check is injected by setting
        (ROUTING_TOPIC_EXISTS_CHECK) because routing knows nothing of Kafka."""
        if not self.name or not TOPIC_NAME_RE.match(self.name) or self.name.startswith("__"):
            return  # the field validator reports it
        check_path = getattr(settings, "ROUTING_TOPIC_EXISTS_CHECK", "")
        if not check_path:
            return
        try:
            exists = import_string(check_path)(name=self.name)
        except Exception as exc:
            raise ValidationError(
                {"name": f"Could not check that topic '{self.name}' exists on the cluster: {exc}"}
            ) from None
        if not exists:
            raise ValidationError(
                {
                    "name": f"Topic '{self.name}' does not exist on the Kafka cluster. Create it first "
                    "(python manage.py ensure_topics, or your Kafka tooling); topics are never auto-created."
                }
            )


class RoutingRule(models.Model):
    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    event_type = models.CharField(max_length=16, choices=[(t, t) for t in EVENT_TYPES], db_index=True)
    pattern = models.JSONField(
        default=dict,
        blank=True,
        validators=[validate_pattern],
        help_text='EventBridge event pattern, e.g. {"quality": [{"numeric": [">=", 4]}]}. {} matches every event.',
    )
    destinations = models.ManyToManyField(Topic, related_name="rules")
    priority = models.IntegerField(default=100, help_text="Lower runs first.")
    enabled = models.BooleanField(default=True, db_index=True)
    stop_processing = models.BooleanField(
        default=False, help_text="When this rule matches, later rules are not evaluated."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    history = HistoricalRecords(m2m_fields=[destinations])

    class Meta:
        ordering = ["priority", "id"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if not isinstance(self.pattern, dict):
            raise ValidationError({"pattern": "A pattern is a JSON object."})
