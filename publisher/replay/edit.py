"""Edit, discard, purge: what an operator does to dead letters besides replaying them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from events.schema import FieldError, validate_event
from publisher.models import DeadLetter, ReplayAttempt
from publisher.replay.values import (
    DISCARDABLE_STATUSES,
    EDITABLE_STATUSES,
    Actor,
    PayloadInvalid,
    ReplayError,
    StateConflict,
    Status,
)

logger = logging.getLogger(__name__)


def validate_payload(*, payload: Any, dead_letter: DeadLetter) -> dict[str, Any]:
    """Validate an edited payload against the event schema; returns the normalized event. The event's identity
    (event_id, event_type) must stay: a replay re-sends *this* event. Raises PayloadInvalid with every error."""
    if not isinstance(payload, dict):
        raise PayloadInvalid([FieldError("", "the payload must be a JSON object (an event)")])
    candidate = dict(payload)
    candidate.setdefault("event_id", str(dead_letter.event_id))
    checked = validate_event(candidate)
    if isinstance(checked, list):
        raise PayloadInvalid(checked)
    data = checked.data
    errors: list[FieldError] = []
    if data["event_id"] != str(dead_letter.event_id):
        errors.append(FieldError("event_id", f"must stay {dead_letter.event_id}: a replay re-sends this event"))
    if data["event_type"] != dead_letter.event_type:
        errors.append(FieldError("event_type", f"must stay {dead_letter.event_type!r}"))
    if errors:
        raise PayloadInvalid(errors)
    return data


def lock_for_edit(*, dead_letter_id: int) -> DeadLetter:
    """Lock the row for the rest of the caller's transaction and check that it may be edited."""
    row = DeadLetter.objects.select_for_update().get(pk=dead_letter_id)
    if row.status not in EDITABLE_STATUSES:
        raise StateConflict(f"A {row.status} entry cannot be edited.")
    return row


def edit_payload(*, dead_letter_id: int, payload: Any, actor: Actor) -> DeadLetter:
    """Validate and save an edited payload; the first edit keeps the old payload in original_payload."""
    with transaction.atomic():
        row = lock_for_edit(dead_letter_id=dead_letter_id)
        data = validate_payload(payload=payload, dead_letter=row)
        if data == row.payload:
            return row
        if row.original_payload is None:
            row.original_payload = row.payload
        row.payload = data
        row.edited_at = timezone.now()
        row.edited_by = actor.user
        row.save(update_fields=["payload", "original_payload", "edited_at", "edited_by", "updated_at"])
    logger.info("dead letter %s edited by %s", dead_letter_id, actor.name, extra={"event": "dlq_edit"})
    return row


def discard(*, dead_letter_ids: Sequence[int], actor: Actor, reason: str) -> list[int]:
    """Discard pending or quarantined rows with a reason; returns the ids discarded (others are left alone)."""
    reason = (reason or "").strip()
    if not reason:
        raise ReplayError("A reason is required to discard dead letters.")
    now = timezone.now()
    with transaction.atomic():
        ids = list(
            DeadLetter.objects.select_for_update(skip_locked=True)
            .filter(pk__in=list(dead_letter_ids), status__in=DISCARDABLE_STATUSES)
            .values_list("id", flat=True)
        )
        DeadLetter.objects.filter(pk__in=ids).update(
            status=Status.DISCARDED,
            discard_reason=reason[:2000],
            discarded_at=now,
            discarded_by=actor.user,
            replay_claimed_at=None,
            updated_at=now,
        )
    if ids:
        logger.info("%d dead letters discarded by %s: %s", len(ids), actor.name, reason, extra={"event": "dlq_discard"})
    return ids


def purge(
    *,
    older_than: timedelta,
    include_replayed: bool = False,
    dry_run: bool = False,
    chunk_size: int = 1000,
    on_chunk: Callable[[int], None] | None = None,
) -> int:
    """Delete discarded (and optionally replayed) entries resolved more than `older_than` ago, in chunks.
    Returns how many were (or, with dry_run, would be) deleted."""
    cutoff = timezone.now() - older_than
    where = Q(status=Status.DISCARDED) & (
        Q(discarded_at__lt=cutoff) | Q(discarded_at__isnull=True, last_failed_at__lt=cutoff)
    )
    if include_replayed:
        where |= Q(status=Status.REPLAYED) & (
            Q(replayed_at__lt=cutoff) | Q(replayed_at__isnull=True, last_failed_at__lt=cutoff)
        )
    if dry_run:
        return DeadLetter.objects.filter(where).count()
    deleted = 0
    cursor = 0
    while True:
        ids = list(
            DeadLetter.objects.filter(where, pk__gt=cursor).order_by("id").values_list("id", flat=True)[:chunk_size]
        )
        if not ids:
            return deleted
        cursor = ids[-1]
        with transaction.atomic():
            ReplayAttempt.objects.filter(dead_letter_id__in=ids).delete()
            _, per_model = DeadLetter.objects.filter(where, pk__in=ids).delete()
        count = per_model.get(DeadLetter._meta.label, 0)
        deleted += count
        if on_chunk is not None:
            on_chunk(count)
