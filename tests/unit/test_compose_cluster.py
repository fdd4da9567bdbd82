"""docker-compose.yml's `cluster` profile, parsed (no Docker engine is needed, or assumed, to check it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def _services() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text())["services"])


def test_the_cluster_profile_has_three_kraft_nodes_of_one_quorum() -> None:
    services = _services()
    nodes = {name: spec for name, spec in services.items() if "cluster" in spec.get("profiles", [])}
    assert sorted(nodes) == ["kafka-1", "kafka-2", "kafka-3"]
    envs = [nodes[f"kafka-{n}"]["environment"] for n in (1, 2, 3)]
    assert [env["KAFKA_NODE_ID"] for env in envs] == [1, 2, 3]
    assert len({env["CLUSTER_ID"] for env in envs}) == 1
    for n, env in enumerate(envs, start=1):
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://kafka-{n}:9092"
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 3
        assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == 2
    # Each node keeps its own log on its own volume.
    assert len({nodes[f"kafka-{n}"]["volumes"][0].split(":")[0] for n in (1, 2, 3)}) == 3


def test_the_default_stack_is_unchanged_and_the_app_can_point_at_the_cluster() -> None:
    services = _services()
    default = sorted(name for name, spec in services.items() if not spec.get("profiles"))
    assert default == ["kafka", "postgres", "redis", "web", "worker"]
    for app in ("web", "worker"):
        assert services[app]["environment"]["KAFKA_BROKERS"] == "${KAFKA_BROKERS:-kafka:9092}"
