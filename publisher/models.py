from __future__ import annotations

import random

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone
from solo.models import SingletonModel

from publisher import retry_budget


def default_max_retries() -> int:
    return int(settings.KAFKA_PRODUCER_RETRIES)


class RetryPolicy(SingletonModel):
    """How a failed delivery is retried before it is dead-lettered. Read at the start of every task, so an
    admin change applies to the next task without a restart."""

    initial_delay_ms = models.PositiveIntegerField(default=100, validators=[MaxValueValidator(60_000)])
    max_delay_ms = models.PositiveIntegerField(default=5000, validators=[MaxValueValidator(300_000)])
    backoff_factor = models.FloatField(default=2.0, validators=[MinValueValidator(1.0), MaxValueValidator(10.0)])
    max_retries = models.PositiveSmallIntegerField(default=default_max_retries, validators=[MaxValueValidator(20)])
    jitter = models.BooleanField(default=True, help_text="Spread retries randomly up to the computed delay.")

    class Meta:
        verbose_name = "retry policy"

    def __str__(self) -> str:
        return "Retry policy"

    def clean(self) -> None:
        super().clean()
        worst = retry_budget.worst_case_seconds(self)
        deadline = retry_budget.deadline_seconds()
        if worst > deadline:
            raise ValidationError(
                f"This policy can keep a task retrying for {worst:.0f} s ({self.max_retries + 1} rounds of up to "
                f"{retry_budget.round_seconds():.0f} s each, plus the delays), longer than the {deadline:.0f} s a "
                "task may retry before the broker hands it to another worker (PUBLISHER_RETRY_DEADLINE, at most half "
                "of CELERY_VISIBILITY_TIMEOUT). Lower the retries or the delays."
            )

    def delay_seconds(self, retry_number: int) -> float:
        """Delay before retry `retry_number` (1-based): exponential, capped, optionally with full jitter."""
        delay_ms = min(self.max_delay_ms, self.initial_delay_ms * self.backoff_factor ** max(0, retry_number - 1))
        if self.jitter:
            delay_ms = random.uniform(delay_ms / 2, delay_ms)
        return delay_ms / 1000.0


class DeadLetter(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        REPLAYED = "replayed", "replayed"
        DISCARDED = "discarded", "discarded"
        QUARANTINED = "quarantined", "quarantined"
        # Transient: a replay claimed the row (compare-and-set) and is waiting for the broker's ack.
        REPLAYING = "replaying", "replaying"

    class Reason(models.TextChoices):
        RETRIES_EXHAUSTED = "retries_exhausted", "retries exhausted"
        PERMANENT_ERROR = "permanent_error", "permanent error"
        POISON_TASK = "poison_task", "task kept killing its worker"

    event_id = models.UUIDField(db_index=True)
    event_type = models.CharField(max_length=16, db_index=True)
    original_topic = models.CharField(max_length=249, db_index=True)
    key = models.CharField(max_length=256, blank=True, db_index=True)
    user_id = models.CharField(max_length=128, blank=True, db_index=True)
    payload = models.JSONField(help_text="The event as accepted; replay publishes this (it may be edited).")
    original_payload = models.JSONField(null=True, blank=True, help_text="The payload before its first edit.")
    value = models.BinaryField(help_text="The record value exactly as it was sent.")
    headers = models.JSONField(default=list)
    format = models.CharField(max_length=16, default="json")
    schema_version = models.PositiveSmallIntegerField(default=1)
    source = models.CharField(max_length=128, blank=True)
    reason = models.CharField(max_length=32, choices=Reason.choices, db_index=True)
    error_class = models.CharField(max_length=128, db_index=True)
    error_message = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=1)
    first_failed_at = models.DateTimeField()
    last_failed_at = models.DateTimeField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    replay_count = models.PositiveIntegerField(default=0)
    in_kafka_dlq = models.BooleanField(default=False, help_text="Also written to the dlq.events topic.")
    # Set when the database refused the entry as it was (e.g. NUL characters): the row then holds a sanitized
    # copy, quarantined, and the event exactly as accepted is kept here.
    # db_default: workers of the previous release, still running during a deploy, insert rows without them.
    quarantine_reason = models.TextField(
        blank=True, db_default="", help_text="Why the entry was stored sanitized, if it was."
    )
    original_b64 = models.TextField(
        blank=True,
        db_default="",
        help_text="The event as accepted (compact JSON, base64) when the row holds a sanitized copy.",
    )
    # The W3C trace id of the request that sent the event (its traceparent and tracestate are in `headers`), so an
    # operator can find a request's dead letters; a replay links to it. db_default: see quarantine_reason.
    trace_id = models.CharField(
        max_length=32, blank=True, db_default="", help_text="W3C trace id of the request that sent the event."
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    # Operations (issue 6): who replayed, edited or discarded the entry, and when.
    replay_claimed_at = models.DateTimeField(
        null=True, blank=True, help_text="When the current replay claimed the row (status replaying)."
    )
    delivered_topics = models.JSONField(
        default=list, blank=True, help_text="Topics a replay already delivered to (never sent twice)."
    )
    replayed_at = models.DateTimeField(null=True, blank=True)
    replayed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    edited_at = models.DateTimeField(null=True, blank=True)
    edited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    discard_reason = models.TextField(blank=True)
    discarded_at = models.DateTimeField(null=True, blank=True)
    discarded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # One row per event and destination: a redelivered task updates the row instead of adding one.
            models.UniqueConstraint(fields=["event_id", "original_topic"], name="deadletter_event_topic_unique"),
        ]
        indexes = [
            models.Index(fields=["status", "-created_at"], name="deadletter_status_created"),
            # The admin list filters on one of these and sorts newest first: each filter is an index range scan
            # that stops after one page, even on millions of rows.
            models.Index(fields=["original_topic", "-created_at", "-id"], name="deadletter_topic_created"),
            models.Index(fields=["event_type", "-created_at", "-id"], name="deadletter_type_created"),
            models.Index(fields=["error_class", "-created_at", "-id"], name="deadletter_error_created"),
            models.Index(fields=["reason", "-created_at", "-id"], name="deadletter_reason_created"),
            # Replay jobs and purges walk one status in id order (keyset pagination).
            models.Index(fields=["status", "id"], name="deadletter_status_id"),
            # Search by trace id (selectors.search): the dead letters of one request.
            models.Index(fields=["trace_id"], name="deadletter_trace_id", condition=~models.Q(trace_id="")),
        ]
        permissions = [
            ("replay_deadletter", "Can replay dead letters"),
            ("discard_deadletter", "Can discard dead letters"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id} -> {self.original_topic} ({self.status})"


class DeadLetterSettings(SingletonModel):
    """Operator knobs for dead-letter replay and retention (a singleton edited in the admin)."""

    max_replays = models.PositiveSmallIntegerField(
        default=5,
        validators=[MinValueValidator(1), MaxValueValidator(100)],
        help_text="Replays of one entry that may fail before it is quarantined.",
    )
    replay_rate = models.FloatField(
        default=100.0,
        validators=[MinValueValidator(0.1), MaxValueValidator(100_000)],
        help_text="Default pace of bulk and background replays, in events per second.",
    )
    retention_days = models.PositiveIntegerField(
        default=30,
        validators=[MinValueValidator(1)],
        help_text="purge_dead_letters deletes discarded entries older than this by default.",
    )
    claim_timeout_seconds = models.PositiveIntegerField(
        default=300,
        validators=[MinValueValidator(30)],
        help_text="A replay that holds an entry longer than this (a crashed process) gives it back.",
    )

    class Meta:
        verbose_name = "dead-letter settings"

    def __str__(self) -> str:
        return "Dead-letter settings"


class ReplayJob(models.Model):
    """A background replay of every pending dead letter matching some filters, paced and cancellable."""

    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        FINISHED = "finished", "finished"
        CANCELLED = "cancelled", "cancelled"
        FAILED = "failed", "failed"

    filters = models.JSONField(default=dict, help_text="topic, reason, error_class, event_type, since, until")
    reroute = models.BooleanField(default=False, help_text="Route through the current rules instead.")
    rate = models.FloatField(help_text="Events per second.")
    limit = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    cancelled = models.BooleanField(default=False, help_text="Set by Cancel; the task stops between chunks.")
    total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    replayed = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)
    cursor = models.BigIntegerField(default=0, help_text="Last dead-letter id handled (keyset pagination).")
    max_id = models.BigIntegerField(null=True, blank=True, help_text="Entries newer than the job are left alone.")
    run_token = models.CharField(max_length=32, blank=True, help_text="Only the task slice holding it may run.")
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Replay job #{self.pk} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in (self.Status.QUEUED, self.Status.RUNNING)

    @property
    def percent(self) -> int:
        return 100 if not self.total else min(100, round(100 * self.done / self.total))


class ReplayAttempt(models.Model):
    """One replay of one dead letter: who, when, where to, and how it went."""

    class Result(models.TextChoices):
        REPLAYED = "replayed", "replayed"
        FAILED = "failed", "failed"
        QUARANTINED = "quarantined", "failed, quarantined"

    dead_letter = models.ForeignKey(DeadLetter, on_delete=models.CASCADE, related_name="replay_attempts")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor = models.CharField(max_length=150, blank=True, help_text="Username, or the command that replayed.")
    via = models.CharField(max_length=16, help_text="admin, bulk, job or command")
    job = models.ForeignKey(ReplayJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="attempts")
    at = models.DateTimeField(default=timezone.now)
    result = models.CharField(max_length=16, choices=Result.choices)
    rerouted = models.BooleanField(default=False)
    topics = models.JSONField(default=list, help_text="Target topics of this replay.")
    error_class = models.CharField(max_length=128, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["dead_letter", "-at"], name="replayattempt_dl_at")]

    def __str__(self) -> str:
        return f"replay of {self.dead_letter_id} at {self.at:%Y-%m-%d %H:%M:%S}: {self.result}"
