"""The wiring: settings from the environment, the service scripts, docker-compose, Kafka codecs, topics."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from kafka import KafkaProducer

from publisher import kafka_gateway
from publisher.services import ensure_topics

ROOT = Path(__file__).resolve().parents[2]


def _manage_check(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=os.environ | {"SECRET_KEY": "test"} | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("KAFKA_COMPRESSION_TYPE", "brotli", "expected one of none, gzip, snappy, lz4, zstd"),
        ("KAFKA_PRODUCER_TIMEOUT", "ten", "is not a duration"),
        ("KAFKA_PRODUCER_RETRIES", "-1", "must be an integer >= 0"),
        ("KAFKA_PRODUCER_RETRIES", "three", "is not an integer"),
        ("INGEST_MAX_BATCH", "0", "must be an integer >= 1"),
        ("INGEST_BACKLOG_GROUP_WAIT", "5s", "is too long: it must be at most 1s"),
        ("INGEST_BACKLOG_GROUP_TASKS", "-1", "must be an integer >= 0"),
        ("DEBUG", "maybe", "is not a boolean"),
        ("KAFKA_TRANSACTIONS", "sometimes", "is not a boolean"),
        ("KAFKA_TRANSACTIONAL_ID_PREFIX", "my app", "1 to 100 letters, digits"),
        ("REDIS_URL", "localhost:6379", "expected redis://"),
        ("REDIS_SENTINELS", "127.0.0.1:26385,127.0.0.1:port", "expected host:port"),
        ("INGEST_REDIS_MIN_REPLICAS", "-1", "must be an integer >= 0"),
        ("INGEST_REDIS_REPLICA_WAIT", "1m", "is too long: it must be at most 10s"),
        ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL", "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD are required"),
        ("INGEST_RATE_LIMIT", "lots", "INGEST_RATE_LIMIT"),
        ("INGEST_AUTH_FAILURES_PER_MINUTE", "many", "is not an integer"),
        ("INGEST_KEY_CACHE_SECONDS", "forever", "is not a duration"),
        ("NUM_PROXIES", "-1", "must be an integer >= 0"),
        ("METRICS_TOKEN", "s3cret tokén", "printable ASCII"),
    ],
)
def test_bad_setting_stops_startup_naming_the_variable(name: str, value: str, expected: str) -> None:
    result = _manage_check(**{name: value})
    assert result.returncode != 0
    assert name in result.stderr
    assert expected in result.stderr


def test_missing_secret_key_is_named() -> None:
    # INGEST_ENV_FILE empty: not the checkout's .env, which holds a SECRET_KEY (tests/integration/test_local_env.py).
    env = {k: v for k, v in os.environ.items() if k != "SECRET_KEY"} | {"INGEST_ENV_FILE": ""}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "SECRET_KEY is required" in result.stderr


def test_defaults_from_the_seed() -> None:
    assert settings.KAFKA_TOPIC_ATTEMPTS == "user.attempts"
    assert settings.KAFKA_PRODUCER_TIMEOUT == 10.0
    assert pytest.approx(0.010) == settings.KAFKA_PRODUCER_BATCH_TIMEOUT
    assert settings.KAFKA_COMPRESSION_TYPE == "snappy"
    assert settings.CELERY_ACCEPT_CONTENT == ["json"]
    assert settings.CELERY_TASK_ACKS_LATE and settings.CELERY_TASK_REJECT_ON_WORKER_LOST


def test_producer_is_idempotent_with_acks_all() -> None:
    config = kafka_gateway.producer_config()
    assert config["acks"] == "all"
    assert config["enable_idempotence"] is True
    assert config["compression_type"] == "snappy"
    assert config["linger_ms"] == 10


def test_services_up_twice_changes_nothing() -> None:
    pid_file = ROOT / ".data" / "kafka" / "kafka.pid"
    before = pid_file.read_text()
    result = subprocess.run(
        ["bash", "scripts/services.sh", "up"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    for service in ("postgres", "redis", "kafka"):
        assert f"{service}: already running" in result.stderr
    assert pid_file.read_text() == before
    status = subprocess.run(["bash", "scripts/services.sh", "status"], cwd=ROOT, capture_output=True, text=True)
    assert status.returncode == 0
    # Only these three: a Sentinel group another test started may be listed too.
    ups = [line.split()[0] for line in status.stdout.splitlines() if " up " in line]
    assert [name for name in ups if name in ("postgres", "redis", "kafka")] == ["postgres", "redis", "kafka"]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed")
def test_docker_compose_file_is_valid() -> None:
    result = subprocess.run(
        ["docker-compose", "-f", "docker-compose.yml", "config"],
        cwd=ROOT,
        env=os.environ | {"SECRET_KEY": "compose-check"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for service in ("kafka:", "postgres:", "redis:", "web:", "worker:"):
        assert service in result.stdout
    assert "appendfsync" in result.stdout
    # Requests reach the containers from the Docker bridge: anything but open, by default.
    assert "METRICS_ACCESS: staff" in result.stdout


@pytest.mark.django_db
def test_ensure_topics_is_idempotent() -> None:
    first = ensure_topics(partitions=3, replication_factor=1)
    second = ensure_topics(partitions=3, replication_factor=1)
    assert second.created == []
    assert set(second.existing) == set(first.created) | set(first.existing)
    assert "dlq.events" in second.existing


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_every_compression_codec_round_trips_through_the_broker(codec: str, kafka_reader: Any) -> None:
    topic = "test.codecs"
    kafka_gateway.ensure_topics(names=[topic], partitions=1, replication_factor=1)
    reader = kafka_reader(topic)
    producer = KafkaProducer(**kafka_gateway.producer_config(compression_type=codec))
    marker = uuid.uuid4().hex
    values = [f"{marker}-{i}-".encode() + b"x" * 500 for i in range(50)]
    try:
        for value in values:
            producer.send(topic, key=b"k", value=value, headers=[("codec", codec.encode())])
        producer.flush(timeout=10)
    finally:
        producer.close()
    records = reader.read(expected=len(values))
    assert [r.value for r in records] == values
    assert all(r.headers["codec"] == codec.encode() for r in records)
