"""Replay by filter as a background job: paced, cancellable, run as a chain of short Celery tasks (slices).

The job's slice task is declared here, beside the code that queues it, rather than in publisher.tasks: publisher.tasks
would import this module and this module would import it back. CELERY_IMPORTS (config.settings) has workers
register it.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime

from celery import Task
from django.contrib.contenttypes.models import ContentType
from django.db import DatabaseError, InterfaceError, transaction
from django.db.models import F, Max
from django.utils import timezone

from publisher.models import DeadLetter, ReplayJob
from publisher.replay.engine import replay_by_filter
from publisher.replay.filters import ReplayFilters, matching
from publisher.replay.values import Actor, KafkaUnavailable, ReplaySummary
from publisher.tasks import publisher_task

logger = logging.getLogger(__name__)

# A background job runs in slices of this many seconds, each a separate Celery task, so no single task comes
# near the broker's visibility timeout and a lost worker only delays the job.
JOB_SLICE_SECONDS = 30.0


def start_job(
    *, filters: ReplayFilters, actor: Actor, rate: float, limit: int | None = None, reroute: bool = False
) -> ReplayJob:
    """Create a job and queue its first slice (after the transaction commits)."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    job = ReplayJob.objects.create(
        filters=filters.to_json(),
        reroute=reroute,
        rate=rate,
        limit=limit,
        created_by=actor.user,
        run_token=uuid.uuid4().hex,
    )
    token = job.run_token
    transaction.on_commit(lambda: _enqueue_slice(job_id=job.pk, token=token))
    logger.info("replay job %s queued by %s: %s", job.pk, actor.name, filters.describe())
    return job


@publisher_task(name="publisher.replay_dead_letters")
def replay_dead_letters(self: Task, job_id: int, token: str) -> None:
    """One slice of a "Replay by filter" job (run_job_slice): paced, cancellable between chunks, and it queues
    the next slice itself, so no task runs longer than a slice."""
    run_job_slice(job_id=job_id, token=token)


def _enqueue_slice(*, job_id: int, token: str, countdown: float = 0) -> None:
    replay_dead_letters.apply_async(kwargs={"job_id": job_id, "token": token}, countdown=countdown or None)


def cancel_job(*, job_id: int) -> ReplayJob:
    """Ask a job to stop; a queued job is cancelled at once, a running one at its next chunk."""
    now = timezone.now()
    ReplayJob.objects.filter(pk=job_id, status=ReplayJob.Status.QUEUED).update(
        cancelled=True, status=ReplayJob.Status.CANCELLED, finished_at=now
    )
    ReplayJob.objects.filter(pk=job_id, status=ReplayJob.Status.RUNNING).update(cancelled=True)
    return ReplayJob.objects.get(pk=job_id)


def run_job_slice(*, job_id: int, token: str, budget_seconds: float = JOB_SLICE_SECONDS) -> None:
    """One slice of a job (the Celery task's body). Only the holder of the job's current token runs; a slice
    that runs out of time hands a new token to the next slice, which it queues."""
    job = ReplayJob.objects.filter(pk=job_id).first()
    if job is None or job.run_token != token or not job.is_active:
        return
    # Admin history rows name a content type; a worker lives for weeks, so don't trust its cached ids (a restored
    # or re-created database has new ones). One query per slice.
    ContentType.objects.clear_cache()
    now = timezone.now()
    if job.cancelled:
        ReplayJob.objects.filter(pk=job_id).update(status=ReplayJob.Status.CANCELLED, finished_at=now)
        return
    filters = ReplayFilters.from_json(job.filters)
    if job.status == ReplayJob.Status.QUEUED:
        _start_running(job, filters, now=now)
    actor = Actor.for_user(job.created_by, via="job") if job.created_by is not None else Actor(f"job #{job_id}", "job")
    try:
        run = replay_by_filter(
            filters=filters,
            actor=actor,
            rate=job.rate,
            limit=None if job.limit is None else max(0, job.limit - job.done),
            reroute=job.reroute,
            cursor=job.cursor,
            max_id=job.max_id,
            deadline=time.monotonic() + budget_seconds,
            job=job,
            should_stop=lambda: ReplayJob.objects.filter(pk=job_id, cancelled=True).exists(),
            on_chunk=lambda chunk, cursor: _count_progress(job_id, chunk, cursor),
        )
    except KafkaUnavailable as exc:
        _continue_job(job_id=job_id, token=token, countdown=10.0, note=str(exc))
        return
    except Exception as exc:
        if isinstance(exc, DatabaseError | InterfaceError):
            raise  # the task retries; the same token resumes the job
        ReplayJob.objects.filter(pk=job_id).update(
            status=ReplayJob.Status.FAILED, error=repr(exc)[:4000], finished_at=timezone.now()
        )
        logger.exception("replay job %s failed", job_id)
        return
    if run.stopped:
        ReplayJob.objects.filter(pk=job_id).update(status=ReplayJob.Status.CANCELLED, finished_at=timezone.now())
    elif run.finished:
        ReplayJob.objects.filter(pk=job_id).update(status=ReplayJob.Status.FINISHED, finished_at=timezone.now())
    else:
        _continue_job(job_id=job_id, token=token)


def _start_running(job: ReplayJob, filters: ReplayFilters, *, now: datetime) -> None:
    """A queued job's first slice fixes what the job covers: rows up to the newest id now, and how many match."""
    job.max_id = DeadLetter.objects.aggregate(m=Max("id"))["m"] or 0
    total = matching(filters=filters, max_id=job.max_id).count()
    job.total = total if job.limit is None else min(total, job.limit)
    job.status = ReplayJob.Status.RUNNING
    job.started_at = now
    job.save(update_fields=["max_id", "total", "status", "started_at", "updated_at"])


def _count_progress(job_id: int, chunk: ReplaySummary, cursor: int) -> None:
    ReplayJob.objects.filter(pk=job_id).update(
        done=F("done") + chunk.done,
        replayed=F("replayed") + chunk.replayed,
        failed=F("failed") + chunk.failed,
        skipped=F("skipped") + chunk.skipped,
        cursor=cursor,
        updated_at=timezone.now(),
    )


def _continue_job(*, job_id: int, token: str, countdown: float = 0, note: str = "") -> None:
    new_token = uuid.uuid4().hex
    if ReplayJob.objects.filter(pk=job_id, run_token=token).update(run_token=new_token, error=note):
        transaction.on_commit(lambda: _enqueue_slice(job_id=job_id, token=new_token, countdown=countdown))
