"""Admin forms for routing: the rule form (pattern as pretty JSON, validated like the model does) and the rule
tester's form."""

from __future__ import annotations

import json
from typing import Any, Final

from django import forms
from django.core.exceptions import ValidationError
from django.db.models import Q, QuerySet
from django.forms.fields import InvalidJSONInput

from routing.models import RESERVED_TOPICS, RoutingRule, Topic, validate_pattern
from routing.patterns import MAX_JSON_NESTING, finite_float, json_type, reject_constant, text_depth

# Text a field will parse at all: pretty-printed patterns are longer than the 4096-character limit, which
# applies to the compact form (models.validate_pattern); anything beyond this is refused before parsing.
MAX_JSON_TEXT: Final = 64 * 1024

MONOSPACE_TEXTAREA_ATTRS: Final = {
    "rows": 14,
    "cols": 90,
    "spellcheck": "false",
    "autocomplete": "off",
    "class": "vLargeTextField routing-json",
    "style": "font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px;",
}


def routable_topics() -> QuerySet[Topic]:
    """Topics a rule may send to: never Kafka's internal topics nor the dead-letter topic."""
    return Topic.objects.exclude(Q(name__startswith="__") | Q(name__in=RESERVED_TOPICS)).order_by("name")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"the key {key!r} appears twice in one object")
        result[key] = value
    return result


def parse_json_text(text: str, *, what: str) -> Any:
    """Strict JSON: no NaN/Infinity, no numbers overflowing to infinity, no duplicate keys, no nesting deeper
    than MAX_JSON_NESTING (measured before json.loads, which recurses per level)."""
    if len(text) > MAX_JSON_TEXT:
        raise ValidationError(
            f"{what} text is {len(text)} characters long; the limit is {MAX_JSON_TEXT}.", code="too_long"
        )
    if text_depth(text) > MAX_JSON_NESTING:
        raise ValidationError(f"{what} is nested deeper than {MAX_JSON_NESTING} levels.", code="too_deep")
    try:
        return json.loads(
            text, parse_constant=reject_constant, parse_float=finite_float, object_pairs_hook=_unique_keys
        )
    except ValueError as exc:  # json.JSONDecodeError included
        raise ValidationError(f"{what} is not valid JSON: {exc}.", code="invalid") from None


class JSONObjectField(forms.JSONField):
    """A JSON object typed into a monospace textarea, shown pretty-printed, parsed strictly."""

    what = "Value"
    example = '{"key": "value"}'

    def __init__(self, *, empty_value: Any = None, **kwargs: Any) -> None:
        kwargs.setdefault("widget", forms.Textarea(attrs=dict(MONOSPACE_TEXTAREA_ATTRS)))
        super().__init__(empty_value=empty_value, **kwargs)
        # ModelForm swaps a model validator's message for the form field's message of the same code; the
        # pattern validator's "invalid" must keep its own text rather than become "Enter a valid JSON."
        self.error_messages.pop("invalid", None)

    def _parse(self, text: str) -> Any:
        value = parse_json_text(text, what=self.what)
        if not isinstance(value, dict):
            raise ValidationError(
                f"{self.what} must be a JSON object, like {self.example}; this is {json_type(value)}.",
                code="not_an_object",
            )
        return value

    def to_python(self, value: Any) -> Any:
        if self.disabled:
            return value
        if value is None or (isinstance(value, str) and not value.strip()):
            return self.empty_value
        if isinstance(value, str):
            return self._parse(value)
        if isinstance(value, dict):
            return value
        raise ValidationError(f"{self.what} must be a JSON object; this is {json_type(value)}.", code="invalid")

    def bound_data(self, data: Any, initial: Any) -> Any:
        if self.disabled:
            return initial
        if data is None:
            return None
        try:
            return self.to_python(data)
        except ValidationError:
            return InvalidJSONInput(data)

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, InvalidJSONInput):
            return value
        if value is None:
            return ""
        if isinstance(value, str):  # already text (e.g. an initial value given as a string)
            return value
        return json.dumps(value, indent=2, ensure_ascii=False)


class PatternField(JSONObjectField):
    what = "Pattern"
    example = '{"quality": [{"numeric": [">=", 4]}]}'

    def validate(self, value: Any) -> None:
        """The model's own validator, run here so its message reaches the field as written (a model field swaps a
        validator's message for its own when their codes clash, and JSONField's "invalid" is "Value must be
        valid JSON.")."""
        super().validate(value)
        if value is not None:
            try:
                validate_pattern(value)
            except ValidationError as exc:
                raise ValidationError(exc.messages) from None


class EventField(JSONObjectField):
    what = "Event"
    example = '{"event_type": "attempt", "quality": 5, ...}'


class RoutingRuleForm(forms.ModelForm):
    pattern = PatternField(
        required=False,
        empty_value={},
        help_text=(
            "An EventBridge event pattern (JSON). Fields AND together, a field's list of alternatives ORs. "
            'Example: {"quality": [{"numeric": [">=", 4]}]}. {} (or nothing) matches every event of the type.'
        ),
    )

    class Meta:
        model = RoutingRule
        fields = (
            "name",
            "description",
            "event_type",
            "pattern",
            "destinations",
            "priority",
            "enabled",
            "stop_processing",
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        destinations = self.fields.get("destinations")
        if isinstance(destinations, forms.ModelMultipleChoiceField):
            destinations.queryset = routable_topics()


class RuleChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        state = "" if obj.enabled else ", disabled"
        return f"{obj.name} ({obj.event_type}, priority {obj.priority}{state})"


class RuleTesterForm(forms.Form):
    event = EventField(help_text="A sample event, as a client would POST it to /api/v1/events.")
    rule = RuleChoiceField(
        queryset=RoutingRule.objects.order_by("event_type", "priority", "id"),
        required=False,
        empty_label="Whole rule set (every enabled rule, in priority order)",
    )
    pattern = PatternField(
        required=False,
        empty_value=None,
        label="Unsaved pattern (optional)",
        help_text="Try a pattern before saving it: on its own, or in place of the chosen rule's pattern.",
    )


SAMPLE_EVENTS: Final[dict[str, dict[str, Any]]] = {
    "attempt": {
        "event_type": "attempt",
        "user_id": "learner-42",
        "occurred_at": "2025-01-15T10:30:00Z",
        "client_attempt_id": "attempt-0001",
        "session_id": "session-1",
        "item_id": "item-7",
        "correct": True,
        "quality": 5,
        "time_taken_ms": 1200,
    },
    "session": {
        "event_type": "session",
        "user_id": "learner-42",
        "occurred_at": "2025-01-15T10:45:00Z",
        "session_id": "session-1",
        "started_at": "2025-01-15T10:00:00Z",
        "ended_at": "2025-01-15T10:45:00Z",
        "items_attempted": 12,
        "items_correct": 9,
    },
    "placement": {
        "event_type": "placement",
        "user_id": "learner-42",
        "occurred_at": "2025-01-15T09:00:00Z",
        "placement_id": "placement-3",
        "completed": True,
        "score": 0.8,
        "level": "B1",
    },
    "activity": {
        "event_type": "activity",
        "user_id": "learner-42",
        "occurred_at": "2025-01-15T11:00:00Z",
        "activity_type": "quiz",
        "properties": {"quiz_id": "q-9"},
    },
}
