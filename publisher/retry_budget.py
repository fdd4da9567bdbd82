"""How long a publish task may spend retrying inside one run.

Redis hands a task that is still unacknowledged after the broker's visibility timeout to another worker, so a
run that retried for longer would be running twice (duplicates), and its redelivery count could make the
second run dead-letter as poison what the first is still delivering. In-task retrying therefore stops at
PUBLISHER_RETRY_DEADLINE (by default a quarter of the visibility timeout, leaving room for the tasks a worker
has prefetched behind it), and the admin refuses a retry policy whose worst case does not fit.
"""

from __future__ import annotations

from typing import Protocol

from django.conf import settings

# How long one publish round may wait for acknowledgements beyond the client's own delivery timeout.
ACK_GRACE_SECONDS = 5.0


class Policy(Protocol):
    initial_delay_ms: int
    max_delay_ms: int
    backoff_factor: float
    max_retries: int


def deadline_seconds() -> float:
    return float(settings.PUBLISHER_RETRY_DEADLINE)


def round_seconds() -> float:
    """The longest one send-and-wait round can take."""
    return float(settings.KAFKA_PRODUCER_TIMEOUT) + ACK_GRACE_SECONDS


def worst_case_seconds(policy: Policy) -> float:
    """Every round timing out, with the full (unjittered) delay between rounds."""
    delays_ms = sum(
        min(policy.max_delay_ms, policy.initial_delay_ms * policy.backoff_factor**n) for n in range(policy.max_retries)
    )
    return (policy.max_retries + 1) * round_seconds() + delays_ms / 1000.0
