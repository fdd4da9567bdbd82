"""The bench's pipeline row variants: each fast-path setting on each Kafka backend, named after what differs."""

from __future__ import annotations

from bench.__main__ import Backend, _parse_args, row_name, row_variants


def test_cluster_rows_are_named_after_the_backend_and_the_setting() -> None:
    single = Backend(None, "127.0.0.1:9092", 1)
    cluster = Backend("cluster", "127.0.0.1:29092,127.0.0.1:29093,127.0.0.1:29094", [2, 3, 4])
    assert row_name("batch", None, single) == "batch"
    assert row_name("batch", None, cluster) == "batch[cluster]"
    assert row_name("single", "none", cluster) == "single[none,cluster]"
    assert row_name("single", "none", single) == "single[none]"


def test_every_fast_path_setting_runs_on_every_backend() -> None:
    single = Backend(None, "127.0.0.1:9092", 1)
    cluster = Backend("cluster", "127.0.0.1:29092", [2])
    args = _parse_args(["--kafka-cluster", "--fast-paths", "none"])
    assert row_variants(args, [single, cluster]) == [("none", single), ("none", cluster)]
