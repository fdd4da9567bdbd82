from __future__ import annotations

import random

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from solo.models import SingletonModel


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
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # One row per event and destination: a redelivered task updates the row instead of adding one.
            models.UniqueConstraint(fields=["event_id", "original_topic"], name="deadletter_event_topic_unique"),
        ]
        indexes = [models.Index(fields=["status", "-created_at"], name="deadletter_status_created")]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id} -> {self.original_topic} ({self.status})"
