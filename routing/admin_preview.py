"""Admin glue for *Preview on recent traffic*: reads the recent events through publisher.recent (the only
module here that reaches Kafka, and only through publisher) and compares with routing.preview. Only the admin
imports this module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from django import forms

from publisher.recent import (
    DEFAULT_RECENT_EVENTS,
    MAX_RECENT_EVENTS,
    RecentEvents,
    RecentEventsUnavailable,
    read_recent_events,
)
from routing.forms import RuleTesterForm
from routing.models import RoutingRule
from routing.preview import Preview, PreviewPlan, RuleEdit, plan_preview, preview

# The rule form's fields a preview reads; errors elsewhere (a duplicate name, say) do not stop a preview.
PREVIEW_FIELDS: Final = ("event_type", "pattern", "destinations", "priority", "enabled", "stop_processing")


def recent_events_field() -> forms.IntegerField:
    return forms.IntegerField(
        label="Recent events",
        min_value=1,
        max_value=MAX_RECENT_EVENTS,
        initial=DEFAULT_RECENT_EVENTS,
        required=False,
        help_text=f"How many of the latest events of the rule's type to preview on (at most {MAX_RECENT_EVENTS:,}).",
        widget=forms.NumberInput(attrs={"style": "width: 7em"}),
    )


class PreviewLimitForm(forms.Form):
    preview_limit = recent_events_field()


@dataclass(frozen=True)
class PreviewOutcome:
    plan: PreviewPlan
    recent: RecentEvents | None
    result: Preview | None
    error: str = ""  # Kafka could not be read

    @property
    def topics_changed(self) -> list[Any]:
        return [topic for topic in self.result.rule_set.topics if topic.changed] if self.result else []


def edit_from_form(cleaned: dict[str, Any], *, rule_id: int | None) -> RuleEdit:
    return RuleEdit(
        rule_id=rule_id,
        name=str(cleaned.get("name") or ""),
        event_type=cleaned["event_type"],
        pattern=cleaned.get("pattern") or {},
        topics=tuple(topic.name for topic in cleaned["destinations"]),
        priority=int(cleaned["priority"]),
        enabled=bool(cleaned.get("enabled")),
        stop_processing=bool(cleaned.get("stop_processing")),
    )


def edit_with_pattern(rule: RoutingRule, pattern: dict[str, Any] | None) -> RuleEdit:
    """The saved rule with an unsaved pattern (the rule tester's case); its own pattern when none is given."""
    return RuleEdit(
        rule_id=rule.pk,
        name=rule.name,
        event_type=rule.event_type,
        pattern=pattern if pattern is not None else rule.pattern or {},
        topics=tuple(t.name for t in rule.destinations.all()),
        priority=rule.priority,
        enabled=rule.enabled,
        stop_processing=rule.stop_processing,
    )


def preview_on_recent_traffic(*, edit: RuleEdit, limit: int | None) -> PreviewOutcome:
    """Raises ValidationError for a bad pattern before anything is read."""
    plan = plan_preview(edit=edit)
    try:
        recent = read_recent_events(
            topics=plan.source_topics,
            event_types=plan.event_types,
            limit=limit or DEFAULT_RECENT_EVENTS,
            formats=plan.topic_formats,
        )
    except RecentEventsUnavailable as exc:
        return PreviewOutcome(plan=plan, recent=None, result=None, error=str(exc))
    return PreviewOutcome(plan=plan, recent=recent, result=preview([e.event for e in recent.events], plan=plan))


class RuleTesterPreviewForm(RuleTesterForm):
    """The rule tester's form with the number of recent events to preview on."""

    preview_limit = recent_events_field()
