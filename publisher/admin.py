"""Admin for the publisher: dead-letter operations (inspect, edit, replay one/many/by filter, discard) and the
retry-policy and dead-letter settings singletons.

Built for a dead-letter table of millions of rows: no full COUNT (a capped count and a status GROUP BY), no
facet counts, filter choices from a loose index scan instead of SELECT DISTINCT, exact-match search on indexed
columns, and the list never loads payloads. Every operation is permission-checked (403 otherwise) and written
to the admin history with its actor; replay logic lives in publisher.replay, the queries behind the list in
publisher.selectors.
"""

from __future__ import annotations

import json
from typing import Any, cast

from django.contrib import admin, messages
from django.contrib.admin.models import ADDITION, CHANGE, LogEntry
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from solo.admin import SingletonModelAdmin

from events.limits import EVENT_TYPES
from events.serialization import CONTENT_TYPES, SerializationError, decode_value
from publisher import replay, selectors, trace
from publisher.forms import DeadLetterForm, DiscardForm, ReplayByFilterForm
from publisher.models import DeadLetter, DeadLetterSettings, ReplayJob, RetryPolicy

Status = DeadLetter.Status
_REPR_FIELDS = ("id", "event_type", "event_id", "original_topic", "status")  # what str(DeadLetter) reads

# -------------------------------------------------------------------------------------------- list helpers


class CappedCountPaginator(Paginator):
    """Counts at most CAP + 1 rows (an index-only scan that stops early) instead of COUNT(*) over millions;
    the list then says "10,000+" and offers the first CAP / per_page pages. Narrow the filters to see more."""

    cap = 10_000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.capped = False

    @cached_property
    def count(self) -> int:
        object_list = self.object_list
        if not isinstance(object_list, QuerySet):
            return len(object_list)
        found = selectors.capped_count(object_list, cap=self.cap)
        self.capped = found > self.cap
        return min(found, self.cap)


class _ValueFilter(admin.SimpleListFilter):
    column = ""

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, str]]:
        return [(v, v) for v in selectors.distinct_values(self.column)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(**{self.column: value}) if value else queryset


class TopicFilter(_ValueFilter):
    title = "original topic"
    parameter_name = column = "original_topic"


class ErrorClassFilter(_ValueFilter):
    title = "error class"
    parameter_name = column = "error_class"


class EventTypeFilter(admin.SimpleListFilter):
    title = "event type"
    parameter_name = "event_type"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, str]]:
        return [(t, t) for t in EVENT_TYPES]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(event_type=value) if value else queryset


class DeadLetterChangeList(ChangeList):
    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> QuerySet[Any]:
        return selectors.for_list(super().get_queryset(request, exclude_parameters))


def _user_pk(request: HttpRequest) -> int:
    return cast(int, request.user.pk)  # admin views only run for logged-in staff


def _pre(value: Any) -> SafeString:
    return format_html('<pre class="dlq-json">{}</pre>', value)


def _pretty_json(value: Any) -> SafeString:
    return _pre(json.dumps(value, indent=2, ensure_ascii=False, default=str))


# -------------------------------------------------------------------------------------------- dead letters


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    form = DeadLetterForm
    list_display = (
        "created_at",
        "event_type",
        "event_id",
        "original_topic",
        "status",
        "reason",
        "error_class",
        "replay_count",
        "user_id",
        "handled_by",
    )
    list_display_links = ("event_id",)
    list_filter = (
        "status",
        TopicFilter,
        EventTypeFilter,
        ErrorClassFilter,
        "reason",
        ("created_at", admin.DateFieldListFilter),
    )
    search_fields = ("event_id", "user_id", "key")  # exact matches, see get_search_results
    search_help_text = "Exact event id, user id, message key or trace id (or a whole traceparent)."
    list_select_related = ("replayed_by", "discarded_by")
    list_per_page = 50
    list_max_show_all = 200
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # facet counts are one COUNT per filter choice
    paginator = CappedCountPaginator
    ordering = ("-created_at", "-id")
    actions = ["replay_selected", "discard_selected"]

    # ---------------------------------------------------------------- permissions

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # the pipeline writes dead letters

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # discard keeps the record; purge_dead_letters deletes old ones

    def has_replay_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm(f"{self.opts.app_label}.replay_deadletter")

    def has_discard_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm(f"{self.opts.app_label}.discard_deadletter")

    def _payload_editable(self, request: HttpRequest, obj: DeadLetter | None) -> bool:
        return obj is not None and obj.status in replay.EDITABLE_STATUSES and self.has_change_permission(request, obj)

    # ---------------------------------------------------------------- list

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return DeadLetterChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[DeadLetter], search_term: str
    ) -> tuple[QuerySet[DeadLetter], bool]:
        return selectors.search(queryset, search_term), False

    @admin.display(description="handled by")
    def handled_by(self, obj: DeadLetter) -> str:
        user = obj.replayed_by if obj.status == Status.REPLAYED else obj.discarded_by
        return user.get_username() if user is not None else ""

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        counts = selectors.status_counts()
        context = {
            "dlq_status_counts": [(value, label, counts.get(value, 0)) for value, label in Status.choices],
            "dlq_total": sum(counts.values()),
            "dlq_can_replay": self.has_replay_permission(request),
            "dlq_cap": CappedCountPaginator.cap,
        }
        return super().changelist_view(request, extra_context=context | (extra_context or {}))

    # ---------------------------------------------------------------- detail

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        payload = "payload" if self._payload_editable(request, obj) else "payload_pretty"
        return [
            (
                "Event",
                {
                    "fields": [
                        "status",
                        "event_id",
                        "event_type",
                        "user_id",
                        "key",
                        "original_topic",
                        "format",
                        "schema_version",
                        "source",
                        "trace_id",
                    ]
                },
            ),
            (
                "Failure",
                {
                    "fields": [
                        "reason",
                        "error_class",
                        "error_message",
                        "attempts",
                        "first_failed_at",
                        "last_failed_at",
                        "in_kafka_dlq",
                        "created_at",
                    ]
                },
            ),
            # Only for an entry the database refused as it was: why, and the event exactly as accepted.
            *([("Quarantine", {"fields": ["quarantine_reason", "original_b64"]})] if obj and obj.original_b64 else []),
            ("Payload", {"fields": [payload, "original_payload_pretty", "decoded_value", "headers_table"]}),
            (
                "Operations",
                {
                    "fields": [
                        "replay_count",
                        "delivered_topics",
                        "replayed_at",
                        "replayed_by",
                        "edited_at",
                        "edited_by",
                        "discard_reason",
                        "discarded_at",
                        "discarded_by",
                        "replay_history",
                    ]
                },
            ),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = [name for _, options in self.get_fieldsets(request, obj) for name in options["fields"]]
        if not self._payload_editable(request, obj):
            return [*fields, "payload"]  # also drops the form's declared payload field
        return [name for name in fields if name != "payload"]

    @admin.display(description="payload")
    def payload_pretty(self, obj: DeadLetter) -> SafeString:
        return _pretty_json(obj.payload)

    @admin.display(description="original payload (before the first edit)")
    def original_payload_pretty(self, obj: DeadLetter) -> SafeString | str:
        return _pretty_json(obj.original_payload) if obj.original_payload is not None else "(not edited)"

    @admin.display(description="record value, decoded")
    def decoded_value(self, obj: DeadLetter) -> SafeString | str:
        value = bytes(obj.value or b"")
        if not value:
            return "(empty: the event could not be serialized)"
        content_type = replay.header(obj, "content-type") or CONTENT_TYPES.get(obj.format, CONTENT_TYPES["json"])
        schema = replay.header(obj, "schema") or ""
        try:
            decoded = decode_value(value, content_type=content_type, schema=schema)
        except SerializationError as exc:
            return format_html(
                "Cannot decode {} bytes ({}, {}): {}<br>{}", len(value), content_type, schema, exc, _pre(value[:512])
            )
        return format_html("{} bytes, {}<br>{}", len(value), content_type, _pretty_json(decoded))

    @admin.display(description="headers")
    def headers_table(self, obj: DeadLetter) -> SafeString | str:
        headers = [item for item in obj.headers or [] if isinstance(item, list | tuple) and len(item) == 2]
        if not headers:
            return "(none)"
        rows = format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", ((k, v) for k, v in headers))
        return format_html('<table class="dlq-headers">{}</table>', rows)

    @admin.display(description="replay history")
    def replay_history(self, obj: DeadLetter) -> SafeString | str:
        attempts = selectors.replay_attempts(obj)
        if not attempts:
            return "(never replayed)"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    a.at.strftime("%Y-%m-%d %H:%M:%S UTC"),
                    a.actor or "-",
                    a.via + (f" #{a.job_id}" if a.job_id else ""),
                    a.result + (" (re-routed)" if a.rerouted else ""),
                    ", ".join(a.topics or []),
                    f"{a.error_class}: {a.error}" if a.error_class else a.error,
                )
                for a in attempts
            ),
        )
        return format_html(
            '<table class="dlq-history"><thead><tr><th>when</th><th>who</th><th>via</th><th>result</th>'
            "<th>topics</th><th>error</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Any = None,
    ) -> HttpResponse:
        if obj is not None:
            context |= {
                "dlq_can_replay": self.has_replay_permission(request, obj)
                and obj.status in (Status.PENDING, Status.QUARANTINED),
                "dlq_can_discard": self.has_discard_permission(request, obj)
                and obj.status in replay.DISCARDABLE_STATUSES,
                "dlq_discard_form": DiscardForm(),
            }
            if not self._payload_editable(request, obj):  # nothing to save on a replayed or discarded entry
                context |= {"show_save": False, "show_save_and_continue": False}
        return super().render_change_form(request, context, add=add, change=change, form_url=form_url, obj=obj)

    def save_model(self, request: HttpRequest, obj: DeadLetter, form: Any, change: bool) -> None:
        # Only the payload is editable; the form validated it and locked the row in this same transaction.
        if "payload" in form.changed_data:
            replay.edit_payload(dead_letter_id=obj.pk, payload=obj.payload, actor=self._actor(request, via="admin"))

    # ---------------------------------------------------------------- operation views

    def get_urls(self) -> list[Any]:
        info = self.opts.app_label, self.opts.model_name
        wrap = self.admin_site.admin_view
        custom: list[URLPattern] = [
            path("replay-by-filter/", wrap(self.replay_by_filter_view), name="{}_{}_replay_by_filter".format(*info)),
            path("trace/", wrap(self.trace_view), name="{}_{}_trace".format(*info)),
            path("replay-jobs/<int:job_id>/", wrap(self.replay_job_view), name="{}_{}_replay_job".format(*info)),
            path(
                "replay-jobs/<int:job_id>/cancel/",
                wrap(self.replay_job_cancel_view),
                name="{}_{}_replay_job_cancel".format(*info),
            ),
            path("<path:object_id>/replay/", wrap(self.replay_view), name="{}_{}_replay".format(*info)),
            path("<path:object_id>/discard/", wrap(self.discard_view), name="{}_{}_discard".format(*info)),
        ]
        return custom + super().get_urls()

    def _actor(self, request: HttpRequest, *, via: str) -> replay.Actor:
        return replay.Actor.for_user(request.user, via=via)  # type: ignore[arg-type]  # admin_view: logged in

    def _change_url(self, obj: DeadLetter) -> str:
        return reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[obj.pk])

    def replay_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            raise Http404(f"No dead letter with id {object_id!r}.")
        if not self.has_replay_permission(request, obj):
            raise PermissionDenied
        try:
            expected: int | None = int(request.POST["replay_count"])
        except (KeyError, ValueError):
            expected = None
        reroute = request.POST.get("reroute") in ("on", "1", "true")
        try:
            outcome = replay.replay_one(
                dead_letter_id=obj.pk,
                actor=self._actor(request, via="admin"),
                reroute=reroute,
                expected_replay_count=expected,
            )
        except replay.KafkaUnavailable as exc:
            messages.error(request, str(exc))
            return redirect(self._change_url(obj))
        if outcome.result is replay.ReplayResult.SKIPPED:
            messages.warning(request, outcome.describe())
        else:
            self.log_change(request, obj, ("Re-routed. " if reroute else "") + outcome.describe())
            if outcome.ok:
                messages.success(request, outcome.describe())
            else:
                messages.error(request, outcome.describe())
        return redirect(self._change_url(obj))

    def discard_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            raise Http404(f"No dead letter with id {object_id!r}.")
        if not self.has_discard_permission(request, obj):
            raise PermissionDenied
        form = DiscardForm(request.POST)
        if not form.is_valid():
            messages.error(request, "A reason is required to discard a dead letter.")
            return redirect(self._change_url(obj))
        reason = form.cleaned_data["reason"]
        discarded = replay.discard(dead_letter_ids=[obj.pk], actor=self._actor(request, via="admin"), reason=reason)
        if discarded:
            self.log_change(request, obj, f"Discarded: {reason}")
            messages.success(request, f"Discarded: {reason}")
        else:
            obj.refresh_from_db(fields=["status"])
            messages.warning(request, f"Not discarded: the entry is {obj.status}.")
        return redirect(self._change_url(obj))

    # ---------------------------------------------------------------- bulk actions

    @admin.action(description="Replay selected dead letters", permissions=["replay"])
    def replay_selected(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        ids = list(queryset.order_by("id").values_list("id", flat=True)[: replay.BULK_ACTION_LIMIT + 1])
        if len(ids) > replay.BULK_ACTION_LIMIT:
            self.message_user(
                request,
                f"More than {replay.BULK_ACTION_LIMIT} entries selected: use “Replay by filter”, which runs in the "
                "background at a set pace.",
                messages.ERROR,
            )
            return
        try:
            summary = replay.replay_many(dead_letter_ids=ids, actor=self._actor(request, via="bulk"), log_history=False)
        except replay.KafkaUnavailable as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        done = [o for o in summary.outcomes if o.result is not replay.ReplayResult.SKIPPED]
        rows = DeadLetter.objects.only(*_REPR_FIELDS).in_bulk([o.dead_letter_id for o in done])
        for outcome in done:
            if outcome.dead_letter_id in rows:
                self.log_change(request, rows[outcome.dead_letter_id], "[bulk] " + outcome.describe())
        level = messages.SUCCESS if not summary.failed else messages.WARNING
        text = f"Replay of {len(ids)} selected: {summary.describe()}."
        if summary.skipped:
            text += " Skipped entries were not pending (already replayed, discarded, quarantined or in progress)."
        self.message_user(request, text, level)

    @admin.action(description="Discard selected dead letters…", permissions=["discard"])
    def discard_selected(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> HttpResponse | None:
        ids = list(queryset.order_by("id").values_list("id", flat=True)[: replay.BULK_ACTION_LIMIT + 1])
        if len(ids) > replay.BULK_ACTION_LIMIT:
            self.message_user(request, f"Select at most {replay.BULK_ACTION_LIMIT} entries to discard.", messages.ERROR)
            return None
        form = DiscardForm(request.POST if "apply" in request.POST else None)
        if "apply" in request.POST and form.is_valid():
            reason = form.cleaned_data["reason"]
            discarded = replay.discard(dead_letter_ids=ids, actor=self._actor(request, via="bulk"), reason=reason)
            rows = DeadLetter.objects.filter(pk__in=discarded).only(*_REPR_FIELDS)
            LogEntry.objects.log_actions(
                user_id=_user_pk(request),
                queryset=list(rows),
                action_flag=CHANGE,
                change_message=f"Discarded: {reason}",
            )
            self.message_user(
                request,
                f"{len(discarded)} of {len(ids)} selected discarded ({len(ids) - len(discarded)} were not pending "
                "or quarantined).",
                messages.SUCCESS if discarded else messages.WARNING,
            )
            return None
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Discard dead letters",
            "ids": ids,
            "form": form,
            "count": len(ids),
            "action": "discard_selected",
            "select_across": request.POST.get("select_across", "0"),
        }
        return TemplateResponse(request, "admin/publisher/deadletter/discard_selected.html", context)

    # ---------------------------------------------------------------- replay by filter (background jobs)

    def replay_by_filter_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_replay_permission(request):
            raise PermissionDenied
        preview: dict[str, Any] | None = None
        if request.method == "POST":
            form = ReplayByFilterForm(request.POST)
            if form.is_valid():
                filters = form.filters()
                limit = form.cleaned_data.get("limit")
                if "_start" in request.POST:
                    job = replay.start_job(
                        filters=filters,
                        actor=self._actor(request, via="job"),
                        rate=form.cleaned_data["rate"],
                        limit=limit,
                        reroute=bool(form.cleaned_data.get("reroute")),
                    )
                    LogEntry.objects.log_actions(
                        user_id=_user_pk(request),
                        queryset=[job],
                        action_flag=ADDITION,
                        change_message=f"Started replay job: {filters.describe()}, {job.rate:g}/s"
                        + (f", limit {limit}" if limit else "")
                        + (", re-routed" if job.reroute else ""),
                    )
                    messages.success(request, f"Replay job #{job.pk} started.")
                    return redirect(
                        reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_replay_job", args=[job.pk])
                    )
                preview = replay.preview(filters=filters, limit=limit)
        else:
            get = request.GET
            form = ReplayByFilterForm(
                initial={
                    "topic": get.get("original_topic", ""),
                    "reason": get.get("reason__exact", ""),
                    "error_class_name": get.get("error_class", ""),
                    "event_type": get.get("event_type", ""),
                    "since": get.get("created_at__gte") or None,
                    "until": get.get("created_at__lt") or None,
                }
            )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Replay dead letters by filter",
            "form": form,
            "preview": preview,
            "jobs": selectors.recent_jobs(),
        }
        return TemplateResponse(request, "admin/publisher/deadletter/replay_by_filter.html", context)

    def trace_view(self, request: HttpRequest) -> HttpResponse:
        """Trace an event: by event id, or by user id + client attempt id (publisher.trace)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        query = {name: request.GET.get(name, "").strip() for name in ("event_id", "user_id", "client_attempt_id")}
        context: dict[str, Any] = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Trace an event",
            "query": query,
            "searched": any(query.values()),
        }
        event_ids: list[str] = []
        if query["event_id"]:
            canonical = trace.canonical_event_id(query["event_id"])
            if canonical is None:
                context["error"] = f"{query['event_id'][:100]!r} is not an event id (a UUID)."
            else:
                event_ids = [canonical]
        elif query["user_id"] or query["client_attempt_id"]:
            if not (query["user_id"] and query["client_attempt_id"]):
                context["error"] = "Give both the user id and the client attempt id."
            else:
                event_ids = trace.event_ids_for_attempt(
                    user_id=query["user_id"], client_attempt_id=query["client_attempt_id"]
                )
        context["traces"] = [trace.trace_event(event_id=event_id) for event_id in event_ids]
        return TemplateResponse(request, "admin/publisher/deadletter/trace.html", context)

    def replay_job_view(self, request: HttpRequest, job_id: int) -> HttpResponse:
        if not (self.has_replay_permission(request) or self.has_view_permission(request)):
            raise PermissionDenied
        job = get_object_or_404(ReplayJob.objects.select_related("created_by"), pk=job_id)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Replay job #{job.pk}",
            "job": job,
            "filters": replay.ReplayFilters.from_json(job.filters).describe(),
            "can_cancel": job.is_active and not job.cancelled and self.has_replay_permission(request),
        }
        return TemplateResponse(request, "admin/publisher/deadletter/replay_job.html", context)

    def replay_job_cancel_view(self, request: HttpRequest, job_id: int) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_replay_permission(request):
            raise PermissionDenied
        get_object_or_404(ReplayJob, pk=job_id)
        job = replay.cancel_job(job_id=job_id)
        LogEntry.objects.log_actions(
            user_id=_user_pk(request), queryset=[job], action_flag=CHANGE, change_message="Cancelled replay job"
        )
        messages.success(request, f"Replay job #{job.pk}: cancel requested.")
        return HttpResponseRedirect(
            reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_replay_job", args=[job.pk])
        )


# -------------------------------------------------------------------------------------------- singletons


@admin.register(RetryPolicy)
class RetryPolicyAdmin(SingletonModelAdmin):
    fields = ("initial_delay_ms", "max_delay_ms", "backoff_factor", "max_retries", "jitter")


@admin.register(DeadLetterSettings)
class DeadLetterSettingsAdmin(SingletonModelAdmin):
    fields = ("max_replays", "replay_rate", "retention_days", "claim_timeout_seconds")


# Topic replays by time range (publisher.replay.topics) have their own admin module.
from publisher import topic_replay_admin  # noqa: E402, F401
