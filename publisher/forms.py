"""Admin forms for dead-letter operations (editing a payload, discarding, replaying by filter) and topic replays."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.utils import timezone

from events.limits import EVENT_TYPES
from publisher import replay
from publisher.models import DeadLetter, DeadLetterSettings
from publisher.replay import topics


class PrettyJSONField(forms.JSONField):
    """A JSON textarea that shows the value indented and keeps non-ASCII text readable."""

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, forms.fields.InvalidJSONInput):
            return value
        return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


class DeadLetterForm(forms.ModelForm):
    """Only the payload is editable. It is validated against the event schema (every error with its path) and
    the row is locked for the rest of the admin's save transaction, so a replay cannot claim it halfway."""

    payload = PrettyJSONField(
        widget=forms.Textarea(attrs={"rows": 24, "cols": 100, "class": "vLargeTextField", "spellcheck": "false"}),
        help_text="The event a replay publishes. Validated against the event schema when saved; "
        "the first edit keeps the old payload as the original.",
    )

    class Meta:
        model = DeadLetter
        fields = ["payload"]

    def clean_payload(self) -> Any:
        payload = self.cleaned_data.get("payload")
        if self.instance.pk is None:
            raise ValidationError("Dead letters are created by the pipeline, not in the admin.")
        try:
            # Inside the admin's transaction (POST): the lock holds until the edit is saved.
            row = replay.lock_for_edit(dead_letter_id=self.instance.pk)
        except replay.StateConflict as exc:
            raise ValidationError(str(exc)) from None
        try:
            return replay.validate_payload(payload=payload, dead_letter=row)
        except replay.PayloadInvalid as exc:
            # One message per problem, each naming its field path (e.g. "quality: must be an integer ...").
            raise ValidationError([ValidationError(str(error)) for error in exc.errors]) from None


class DiscardForm(forms.Form):
    reason = forms.CharField(
        max_length=2000,
        strip=True,
        widget=forms.TextInput(attrs={"size": 60, "placeholder": "Why is this not replayed? (kept with the entry)"}),
    )


def _choices(values: list[str]) -> list[tuple[str, str]]:
    return [("", "any"), *((v, v) for v in values)]


class ReplayByFilterForm(forms.Form):
    """The filters of a background replay job. Only pending entries are replayed."""

    topic = forms.CharField(required=False, max_length=249, help_text="Original topic (exact).")
    reason = forms.ChoiceField(required=False, choices=[("", "any"), *DeadLetter.Reason.choices])
    # Not "error_class": Form.error_class is the class of its error lists.
    error_class_name = forms.CharField(
        required=False, max_length=128, label="Error class", help_text="e.g. KafkaTimeoutError (exact)."
    )
    event_type = forms.ChoiceField(required=False, choices=_choices(list(EVENT_TYPES)))
    since = forms.DateTimeField(required=False, help_text="Dead-lettered at or after (UTC), e.g. 2026-11-01 00:00.")
    until = forms.DateTimeField(required=False, help_text="Dead-lettered before (UTC).")
    limit = forms.IntegerField(required=False, min_value=1, help_text="At most this many entries.")
    rate = forms.FloatField(min_value=0.1, max_value=100_000, help_text="Events per second.")
    reroute = forms.BooleanField(
        required=False,
        label="Re-route through the current rules",
        help_text="Instead of the original topic, publish to every topic the current rules choose.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["rate"].initial = DeadLetterSettings.get_solo().replay_rate

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        since, until = data.get("since"), data.get("until")
        if since and until and until <= since:
            self.add_error("until", "must be after 'since'")
        return data

    def filters(self) -> replay.ReplayFilters:
        data = self.cleaned_data
        return replay.ReplayFilters(
            topic=data.get("topic") or "",
            reason=data.get("reason") or "",
            error_class=data.get("error_class_name") or "",
            event_type=data.get("event_type") or "",
            since=data.get("since"),
            until=data.get("until"),
        )


class TopicReplayForm(forms.Form):
    """A replay of a topic's records by time range (publisher.replay.topics); checked the way the command is."""

    source_topic = forms.CharField(max_length=249, help_text="The topic to read, e.g. user.attempts.")
    since = forms.CharField(help_text="Records at or after: 7d, 12h (that long ago), 2026-11-01 or an ISO datetime.")
    until = forms.CharField(required=False, help_text="Records before (same forms). Empty: now.")
    through_rules = forms.BooleanField(
        required=False,
        label="Through the current rules",
        help_text="Route each event with the routing rules in force now.",
    )
    target_topic = forms.CharField(
        required=False, max_length=249, label="Or to topic", help_text="Copy each record to this topic instead."
    )
    rate = forms.FloatField(min_value=0.1, max_value=100_000, help_text="Events per second.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["rate"].initial = DeadLetterSettings.get_solo().replay_rate

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        now = timezone.now()
        for name in ("since", "until"):
            text = (data.get(name) or "").strip()
            try:
                data[name] = replay.parse_since(text, now=now) if text else now
            except ValueError as exc:
                self.add_error(name, str(exc))
        if self.errors:
            return data
        try:
            topics.validate_request(
                source_topic=data["source_topic"],
                since=data["since"],
                until=data["until"],
                through_rules=bool(data.get("through_rules")),
                target_topic=data.get("target_topic") or "",
                rate=data["rate"],
            )
        except topics.TopicReplayRefused as exc:
            raise ValidationError(str(exc)) from None
        return data
