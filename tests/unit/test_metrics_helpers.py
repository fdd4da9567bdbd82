"""publisher.metrics batch helpers count exactly what one call per event would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from publisher import metrics
from tests.fastpath_switch import on_off

BUCKETS = (0.005, 0.01, 0.1, 1, 10)


def _histogram(registry: CollectorRegistry, name: str) -> Histogram:
    # Distinct names: in multiprocess mode (config sets PROMETHEUS_MULTIPROC_DIR) values are keyed by name in
    # this process's files, whatever the registry.
    return Histogram(name, "test", buckets=BUCKETS, registry=registry)


def _samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, str], float]:
    return {
        (sample.name.removeprefix(name), sample.labels.get("le", "")): sample.value
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


@on_off("prometheus_histogram")
@pytest.mark.parametrize("amount", [0.0, 0.005, 0.007, 0.5, 10, 99.0])
def test_observe_many_matches_repeated_observe(amount: float, fast_path_on: bool) -> None:
    tag = str(amount).replace(".", "_") + ("_fast" if fast_path_on else "_public")
    one_by_one, batched = CollectorRegistry(), CollectorRegistry()
    single = _histogram(one_by_one, f"single_{tag}")
    for _ in range(7):
        single.observe(amount)
    metrics.observe_many(_histogram(batched, f"batched_{tag}"), amount, 7)

    assert _samples(batched, f"batched_{tag}") == _samples(one_by_one, f"single_{tag}")
    assert _samples(batched, f"batched_{tag}")[("_count", "")] == 7


@on_off("prometheus_histogram")
def test_observe_many_of_nothing_observes_nothing(fast_path_on: bool) -> None:
    registry = CollectorRegistry()
    name = f"nothing_{'fast' if fast_path_on else 'public'}_seconds"
    metrics.observe_many(_histogram(registry, name), 0.5, 0)
    assert registry.get_sample_value(f"{name}_count") == 0


def test_count_each_adds_per_label_value() -> None:
    registry = CollectorRegistry()
    counter = Counter("counted_per_topic", "test", ["topic"], registry=registry)
    metrics.count_each(counter, "topic", ["a", "b", "a", "a"])
    metrics.count_each(counter, "topic", [])
    assert registry.get_sample_value("counted_per_topic_total", {"topic": "a"}) == 3
    assert registry.get_sample_value("counted_per_topic_total", {"topic": "b"}) == 1
