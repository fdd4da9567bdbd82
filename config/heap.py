"""The garbage collector in long-running processes (web workers, Celery's processes), set once start-up is done.

Start-up leaves a large heap that lives as long as the process (Django, DRF, Celery, kombu, kafka-python, the
URL and routing tables). Python's collector would keep scanning it in every full collection; `gc.freeze()`
moves it out of the collector's sight. And a publish task or a batch request allocates thousands of short-lived
containers that reference counting frees anyway, which at the default threshold (700) triggers a young
collection every few dozen events: a measurable share of a publish task's CPU, next to none with the threshold
below (docs/performance.md, fourth round). Cyclic garbage is still collected, just after 20,000 net allocations
instead of 700 (a few MB at most).
"""

from __future__ import annotations

import gc

YOUNG_GENERATION_THRESHOLD = 20_000


def settle_after_startup(*, young_threshold: int | None = YOUNG_GENERATION_THRESHOLD) -> None:
    """Freeze what exists now; with `young_threshold`, collect the youngest generation that much less often."""
    gc.collect()
    gc.freeze()
    if young_threshold is not None:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(young_threshold, middle, old)
