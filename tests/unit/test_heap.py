"""config.heap: what start-up allocated is frozen out of the collector, and young collections run less often."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from config.heap import YOUNG_GENERATION_THRESHOLD, settle_after_startup


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_startup_heap_is_frozen_and_the_young_threshold_raised(restored_gc: None) -> None:
    gc.unfreeze()
    long_lived = [{"n": n} for n in range(1000)]
    settle_after_startup()
    assert gc.get_freeze_count() >= len(long_lived)
    young, middle, old = gc.get_threshold()
    assert young == YOUNG_GENERATION_THRESHOLD
    assert (middle, old) == (10, 10)  # the older generations keep Python's defaults


def test_cyclic_garbage_is_still_collected(restored_gc: None) -> None:
    settle_after_startup()

    class Node:
        pass

    collected: list[str] = []
    gc.callbacks.append(lambda phase, info: collected.append(phase))
    try:
        for _ in range(YOUNG_GENERATION_THRESHOLD * 2):  # cycles only the collector can free
            a, b = Node(), Node()
            a.other, b.other = b, a  # type: ignore[attr-defined]
    finally:
        gc.callbacks.pop()
    assert "stop" in collected


def test_the_web_tier_keeps_the_default_young_threshold(restored_gc: None) -> None:
    before = gc.get_threshold()
    settle_after_startup(young_threshold=None)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() > 0
