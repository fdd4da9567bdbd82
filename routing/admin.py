"""Admin for topics and routing rules, with history (django-simple-history) and a rule tester.

Every save or delete (including the enable/disable actions, list edits and history reverts) goes through
Model.save()/delete(), so routing.signals bumps the rules version and every worker reloads within a second.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Count, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.template.response import TemplateResponse
from django.urls import URLPattern, URLResolver, path, reverse
from django.utils.html import format_html
from simple_history.admin import SimpleHistoryAdmin

from routing import services
from routing.admin_preview import (
    PREVIEW_FIELDS,
    PreviewLimitForm,
    PreviewOutcome,
    RuleTesterPreviewForm,
    edit_from_form,
    edit_with_pattern,
    preview_on_recent_traffic,
)
from routing.forms import SAMPLE_EVENTS, RoutingRuleForm, routable_topics
from routing.models import RoutingRule, Topic


class HistoryAdmin(SimpleHistoryAdmin):
    """SimpleHistoryAdmin whose "revert to this version" form only accepts a POST from users who may change
    the object (simple-history only checks the view permission there)."""

    def history_form_view(
        self, request: HttpRequest, object_id: str, version_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if request.method == "POST" and not self.has_change_permission(request):
            raise PermissionDenied
        return super().history_form_view(request, object_id, version_id, extra_context)


@admin.register(Topic)
class TopicAdmin(HistoryAdmin):
    list_display = ("name", "format", "description", "rule_count")
    list_filter = ("format",)
    search_fields = ("name", "description")
    ordering = ("name",)
    readonly_fields = ("created_at", "updated_at")
    fields = ("name", "format", "description", "created_at", "updated_at")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Topic]:
        return super().get_queryset(request).annotate(rule_count=Count("rules", distinct=True))

    @admin.display(description="Rules", ordering="rule_count")
    def rule_count(self, obj: Topic) -> int:
        return int(getattr(obj, "rule_count", 0))

    def formfield_for_dbfield(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        if db_field.name == "name" and field is not None:
            field.help_text = (
                "Kafka topic name: letters, digits, '.', '_' and '-' (at most 249). The topic must exist in Kafka "
                "(topics are not created automatically; `manage.py ensure_topics` creates the configured ones)."
            )
        return field


@admin.register(RoutingRule)
class RoutingRuleAdmin(HistoryAdmin):
    form = RoutingRuleForm
    list_display = (
        "priority",
        "name",
        "event_type",
        "enabled",
        "stop_processing",
        "destination_list",
        "updated_at",
    )
    list_display_links = ("name",)
    list_editable = ("priority", "enabled")
    list_filter = ("event_type", "enabled", "stop_processing", "destinations")
    search_fields = ("name", "description")
    ordering = ("priority", "id")
    filter_horizontal = ("destinations",)
    readonly_fields = ("created_at", "updated_at")
    actions = ("enable_selected", "disable_selected")
    history_list_display = ("enabled", "priority")
    fieldsets = (
        (None, {"fields": ("name", "description", "event_type")}),
        ("Matching", {"fields": ("pattern",)}),
        ("Destinations", {"fields": ("destinations",)}),
        ("Evaluation", {"fields": ("priority", "enabled", "stop_processing")}),
        ("Changes", {"fields": ("created_at", "updated_at"), "classes": ("collapse",)}),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[RoutingRule]:
        return super().get_queryset(request).prefetch_related("destinations")

    @admin.display(description="Destinations")
    def destination_list(self, obj: RoutingRule) -> str:
        return ", ".join(sorted(topic.name for topic in obj.destinations.all()))

    @admin.display(description="Pattern")
    def pattern_pretty(self, obj: RoutingRule) -> str:
        return format_html(
            '<pre style="margin: 0; white-space: pre-wrap;">{}</pre>',
            json.dumps(obj.pattern, indent=2, ensure_ascii=False),
        )

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None or self.has_change_permission(request, obj):
            return fieldsets
        # Read-only view: show the pattern pretty-printed instead of Django's one-line JSON.
        return [
            (name, {**options, "fields": tuple("pattern_pretty" if f == "pattern" else f for f in options["fields"])})
            for name, options in fieldsets
        ]

    def formfield_for_manytomany(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "destinations":
            kwargs["queryset"] = routable_topics()
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    # ------------------------------------------------------------------------------------------- actions

    def _set_enabled(self, request: HttpRequest, queryset: QuerySet[RoutingRule], enabled: bool) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        changed = 0
        with transaction.atomic():
            rules = RoutingRule.objects.select_for_update().filter(pk__in=ids, enabled=not enabled).order_by("pk")
            for rule in rules:
                rule.enabled = enabled
                rule._history_user = request.user  # type: ignore[attr-defined]
                rule.save(update_fields=["enabled", "updated_at"])
                self.log_change(request, rule, [{"changed": {"fields": ["Enabled"]}}])
                changed += 1
        verb = "Enabled" if enabled else "Disabled"
        already = len(ids) - changed
        if changed:
            message = f"{verb} {changed} rule{'s' if changed != 1 else ''}."
            if already:
                message += f" {already} {'was' if already == 1 else 'were'} already {verb.lower()}."
            self.message_user(request, message, messages.SUCCESS)
        else:
            self.message_user(request, f"All selected rules were already {verb.lower()}.", messages.INFO)

    @admin.action(description="Enable selected rules", permissions=["change"])
    def enable_selected(self, request: HttpRequest, queryset: QuerySet[RoutingRule]) -> None:
        self._set_enabled(request, queryset, True)

    @admin.action(description="Disable selected rules", permissions=["change"])
    def disable_selected(self, request: HttpRequest, queryset: QuerySet[RoutingRule]) -> None:
        self._set_enabled(request, queryset, False)

    # ------------------------------------------------------------------------------------------- tester

    def get_urls(self) -> list[URLPattern | URLResolver]:
        info = f"{self.opts.app_label}_{self.opts.model_name}"
        wrap = self.admin_site.admin_view
        return [
            path("tester/", wrap(self.tester_view), name=f"{info}_tester"),
            path("preview/", wrap(self.preview_view), name=f"{info}_preview_new"),
            path("<path:object_id>/preview/", wrap(self.preview_view), name=f"{info}_preview"),
            *super().get_urls(),
        ]

    def tester_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        result: services.RoutingTestResult | None = None
        outcome: PreviewOutcome | None = None
        if request.method == "POST":
            form = RuleTesterPreviewForm(request.POST)
            if form.is_valid() and "_preview" in request.POST:
                outcome = self._tester_preview(form)
            elif form.is_valid():
                result = self._tester_result(form)
        else:
            raw = request.GET.get("rule", "")
            rule = RoutingRule.objects.filter(pk=int(raw)).first() if raw.isdecimal() and len(raw) < 19 else None
            sample = SAMPLE_EVENTS[rule.event_type if rule is not None else "attempt"]
            form = RuleTesterPreviewForm(initial={"rule": rule, "event": sample})
        context = {
            **self.admin_site.each_context(request),
            "title": "Test routing rules",
            "opts": self.opts,
            "form": form,
            "result": result,
            "preview": outcome,
            "event_json": json.dumps(result.event, indent=2, ensure_ascii=False, default=str) if result else "",
            "changelist_url": reverse("admin:routing_routingrule_changelist"),
            "media": self.media + form.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/routing/routingrule/tester.html", context)

    def _tester_result(self, form: RuleTesterPreviewForm) -> services.RoutingTestResult | None:
        rule = form.cleaned_data["rule"]
        try:
            return services.test_routing(
                event=form.cleaned_data["event"],
                rule_id=rule.pk if rule is not None else None,
                pattern=form.cleaned_data["pattern"],
            )
        except ValidationError as exc:
            form.add_error("pattern", exc)
        except RoutingRule.DoesNotExist:
            form.add_error("rule", "This rule no longer exists.")
        return None

    def _tester_preview(self, form: RuleTesterPreviewForm) -> PreviewOutcome | None:
        """The chosen rule with the unsaved pattern, on recent traffic (a pattern alone has no saved rule, no
        event type nor destinations to compare with)."""
        rule = form.cleaned_data["rule"]
        if rule is None:
            form.add_error(
                "rule",
                "Choose a rule to preview on recent traffic: the preview compares a rule's "
                "unsaved pattern with its saved one.",
            )
            return None
        try:
            return preview_on_recent_traffic(
                edit=edit_with_pattern(rule, form.cleaned_data["pattern"]),
                limit=form.cleaned_data["preview_limit"],
            )
        except ValidationError as exc:
            form.add_error("pattern", exc)
        except RoutingRule.DoesNotExist:
            form.add_error("rule", "This rule no longer exists.")
        return None

    # ------------------------------------------------------------------------------------------- preview

    def preview_view(self, request: HttpRequest, object_id: str | None = None) -> HttpResponse:
        """*Preview on recent traffic* from the add/change form: the unsaved form contents against the saved rule
        and rule set, shown on the same form (still unsaved). POST only; reads Kafka, writes nothing."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        saved = self.get_object(request, unquote(object_id)) if object_id is not None else None
        if object_id is not None and saved is None:
            raise Http404(f"No routing rule with id {object_id!r}.")
        allowed = self.has_change_permission(request, saved) if saved else self.has_add_permission(request)
        if not allowed:
            raise PermissionDenied
        # A copy for the form to clean into: the saved row stays as it is for the comparison and the page.
        instance = RoutingRule.objects.get(pk=saved.pk) if saved is not None else None
        form = self.get_form(request, saved, change=saved is not None)(request.POST, instance=instance)
        limit_form = PreviewLimitForm(request.POST)
        form.is_valid()
        outcome: PreviewOutcome | None = None
        if limit_form.is_valid() and not any(name in form.errors for name in PREVIEW_FIELDS):
            edit = edit_from_form(form.cleaned_data, rule_id=saved.pk if saved else None)
            try:
                outcome = preview_on_recent_traffic(edit=edit, limit=limit_form.cleaned_data["preview_limit"])
            except ValidationError as exc:  # the field validated it; a race with a deleted rule ends here too
                form.add_error("pattern", exc)
            except RoutingRule.DoesNotExist:
                raise Http404(f"No routing rule with id {object_id!r}.") from None
        return self._render_preview(request, form, limit_form, saved, outcome)

    def _render_preview(
        self,
        request: HttpRequest,
        form: Any,
        limit_form: PreviewLimitForm,
        saved: RoutingRule | None,
        outcome: PreviewOutcome | None,
    ) -> HttpResponse:
        fieldsets = self.get_fieldsets(request, saved)
        admin_form = helpers.AdminForm(
            form,
            list(fieldsets),
            self.get_prepopulated_fields(request, saved),
            self.get_readonly_fields(request, saved),
            model_admin=self,
        )
        add = saved is None
        object_id = saved.pk if saved is not None else None
        context = {
            **self.admin_site.each_context(request),
            "title": f"{'Add' if add else 'Change'} {self.opts.verbose_name}",
            "subtitle": str(saved) if saved else None,
            "adminform": admin_form,
            "object_id": object_id,
            "original": saved,
            "is_popup": False,
            "to_field": None,
            "media": self.media + admin_form.media,
            "inline_admin_formsets": [],
            "errors": helpers.AdminErrorList(form, []),
            "preserved_filters": self.get_preserved_filters(request),
            "preview": outcome,
            "preview_limit_form": limit_form,
        }
        url_name = "admin:routing_routingrule_add" if add else "admin:routing_routingrule_change"
        form_url = reverse(url_name, args=[] if object_id is None else [object_id])
        request.current_app = self.admin_site.name
        return self.render_change_form(request, context, add=add, change=not add, obj=saved, form_url=form_url)

    def render_change_form(self, request: HttpRequest, context: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        context.setdefault("preview_limit_form", PreviewLimitForm())
        return super().render_change_form(request, context, *args, **kwargs)
