"""Admin for topic replays by time range (publisher.replay.topics): start one, watch its progress, cancel,
resume. Each job row is its own audit record (who, when, parameters, counts, status); starting, cancelling and
resuming are also written to the admin history. Registered by publisher.admin."""

from __future__ import annotations

from typing import Any, cast

from django.contrib import admin, messages
from django.contrib.admin.models import ADDITION, CHANGE, LogEntry
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse

from publisher import replay
from publisher.forms import TopicReplayForm
from publisher.models import TopicReplayJob
from publisher.replay import topics

REPLAY_PERMISSION = "publisher.replay_topic"


@admin.register(TopicReplayJob)
class TopicReplayJobAdmin(admin.ModelAdmin):
    list_display = ("__str__", "window", "destination", "rate", "progress", "started_by", "created_at")
    list_filter = ("status", "through_rules")
    search_fields = ("source_topic", "target_topic", "actor")
    ordering = ("-created_at", "-id")
    list_select_related = ("created_by",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(REPLAY_PERMISSION)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a job is not edited; it is cancelled or resumed

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # the job is the audit record

    @admin.display(description="window")
    def window(self, obj: TopicReplayJob) -> str:
        return f"{obj.since:%Y-%m-%d %H:%M:%S} .. {obj.until:%Y-%m-%d %H:%M:%S}"

    @admin.display(description="progress")
    def progress(self, obj: TopicReplayJob) -> str:
        return f"{obj.read} / {obj.total} ({obj.percent}%), {obj.replayed} replayed, {obj.failed} failed"

    @admin.display(description="started by")
    def started_by(self, obj: TopicReplayJob) -> str:
        return obj.created_by.get_username() if obj.created_by else obj.actor or "-"

    def get_urls(self) -> list[Any]:
        info = self.opts.app_label, self.opts.model_name
        wrap = self.admin_site.admin_view
        custom: list[URLPattern] = [
            path("<int:job_id>/cancel/", wrap(self.cancel_view), name="{}_{}_cancel".format(*info)),
            path("<int:job_id>/resume/", wrap(self.resume_view), name="{}_{}_resume".format(*info)),
        ]
        return custom + super().get_urls()

    def _job_url(self, job_id: int) -> str:
        return reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[job_id])

    def _log(self, request: HttpRequest, job: TopicReplayJob, flag: int, message: str) -> None:
        user_id = cast(int, request.user.pk)  # admin views only run for logged-in staff
        LogEntry.objects.log_actions(user_id=user_id, queryset=[job], action_flag=flag, change_message=message)

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: Any = None) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = TopicReplayForm(request.POST or None, initial=dict(request.GET.items()) or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                job = topics.start_topic_replay(
                    source_topic=data["source_topic"],
                    since=data["since"],
                    until=data["until"],
                    through_rules=bool(data["through_rules"]),
                    target_topic=data["target_topic"] or "",
                    rate=data["rate"],
                    actor=replay.Actor.for_user(request.user, via="job"),  # type: ignore[arg-type]  # logged in
                )
            except topics.TopicReplayRefused as exc:
                form.add_error(None, str(exc))
            else:
                self._log(request, job, ADDITION, f"Started topic replay: {job.describe()}")
                messages.success(request, f"Topic replay #{job.pk} started.")
                return HttpResponseRedirect(self._job_url(job.pk))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Replay a topic by time range",
            "form": form,
        }
        return TemplateResponse(request, "admin/publisher/topicreplayjob/start.html", context)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        job = get_object_or_404(TopicReplayJob.objects.select_related("created_by"), pk=object_id)
        can_operate = request.user.has_perm(REPLAY_PERMISSION)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Topic replay #{job.pk}",
            "job": job,
            "started_by": self.started_by(job),
            "partitions": _partition_rows(job),
            "can_cancel": can_operate and job.is_active and not job.cancelled,
            "can_resume": can_operate and job.resumable,
        }
        return TemplateResponse(request, "admin/publisher/topicreplayjob/job.html", context)

    def cancel_view(self, request: HttpRequest, job_id: int) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not request.user.has_perm(REPLAY_PERMISSION):
            raise PermissionDenied
        get_object_or_404(TopicReplayJob, pk=job_id)
        job = topics.cancel_topic_replay(job_id=job_id)
        self._log(request, job, CHANGE, "Cancelled topic replay")
        messages.success(request, f"Topic replay #{job.pk}: cancel requested.")
        return HttpResponseRedirect(self._job_url(job.pk))

    def resume_view(self, request: HttpRequest, job_id: int) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not request.user.has_perm(REPLAY_PERMISSION):
            raise PermissionDenied
        get_object_or_404(TopicReplayJob, pk=job_id)
        try:
            job = topics.resume_topic_replay(job_id=job_id)
        except topics.TopicReplayRefused as exc:
            messages.error(request, str(exc))
        else:
            self._log(request, job, CHANGE, "Resumed topic replay")
            messages.success(request, f"Topic replay #{job.pk} resumed.")
        return HttpResponseRedirect(self._job_url(job_id))


def _partition_rows(job: TopicReplayJob) -> list[tuple[str, int, int, int]]:
    """(partition, first offset, next offset to read, end offset) for the job page."""
    rows = []
    for partition, (first, end) in sorted(job.bounds.items(), key=lambda item: int(item[0])):
        rows.append((partition, first, int(job.positions.get(partition, first)), end))
    return rows
