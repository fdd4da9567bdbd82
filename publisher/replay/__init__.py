"""Dead-letter operations: replay (one, selected, by filter, as a paced background job), edit, discard, purge.

The package's modules: `values` (states, errors, results, actors, pacing), `filters` (what a bulk replay takes),
`engine` (claim, publish, record: replay_one, replay_many, replay_by_filter), `jobs` (replay by filter as a
background job of Celery slices) and `edit` (edit, discard, purge). Callers use the names re-exported here.

Replay publishes a dead letter's payload to its original topic (or, on request, to wherever the current rules
send it), serialized in each topic's current format, through this process's producer, and marks the row
replayed only after the broker acknowledged every record.

Exactly-once per click: a replay first *claims* the row with a compare-and-set
(``UPDATE ... SET status='replaying' WHERE id=%s AND status=<seen> AND replay_count=<seen>``, or
``SELECT ... FOR UPDATE SKIP LOCKED`` for a chunk), so a second click, a second browser tab or a concurrent job
finds nothing to claim and publishes nothing. A failed replay gives the row back (pending, new error,
replay_count + 1) until ``DeadLetterSettings.max_replays`` failures, after which it is quarantined: bulk and
background replays leave quarantined rows alone; an operator may still replay one from its page.

The one unavoidable window: if the process dies after the broker's ack and before the row is marked, the row
stays ``replaying`` until ``claim_timeout_seconds`` pass, then goes back to pending and may be replayed again
(at-least-once there; consumers dedupe by the ``event_id`` header as they must anyway).
"""

from publisher.replay.edit import discard, edit_payload, lock_for_edit, purge, validate_payload
from publisher.replay.engine import (
    FilterRun,
    log_outcomes,
    release_stale_claims,
    replay_by_filter,
    replay_many,
    replay_one,
)
from publisher.replay.filters import ReplayFilters, matching, parse_age, parse_since, preview
from publisher.replay.jobs import JOB_SLICE_SECONDS, cancel_job, run_job_slice, start_job
from publisher.replay.values import (
    BULK_ACTION_LIMIT,
    DISCARDABLE_STATUSES,
    EDITABLE_STATUSES,
    MAX_CHUNK,
    Actor,
    KafkaUnavailable,
    PayloadInvalid,
    ReplayError,
    ReplayOutcome,
    ReplayResult,
    ReplaySummary,
    StateConflict,
    Status,
    TokenBucket,
    UnknownTopic,
    Unrouted,
    chunk_size_for,
    header,
    settings_singleton,
)

__all__ = [
    "BULK_ACTION_LIMIT",
    "DISCARDABLE_STATUSES",
    "EDITABLE_STATUSES",
    "JOB_SLICE_SECONDS",
    "MAX_CHUNK",
    "Actor",
    "FilterRun",
    "KafkaUnavailable",
    "PayloadInvalid",
    "ReplayError",
    "ReplayFilters",
    "ReplayOutcome",
    "ReplayResult",
    "ReplaySummary",
    "StateConflict",
    "Status",
    "TokenBucket",
    "UnknownTopic",
    "Unrouted",
    "cancel_job",
    "chunk_size_for",
    "discard",
    "edit_payload",
    "header",
    "lock_for_edit",
    "log_outcomes",
    "matching",
    "parse_age",
    "parse_since",
    "preview",
    "purge",
    "release_stale_claims",
    "replay_by_filter",
    "replay_many",
    "replay_one",
    "run_job_slice",
    "settings_singleton",
    "start_job",
    "validate_payload",
]
