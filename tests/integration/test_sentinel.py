"""Redis behind Sentinel (REDIS_SENTINELS): the app's Redis client, the web tier's admission and Celery follow a
failover without a restart, and INGEST_REDIS_MIN_REPLICAS makes the admission wait for replicas.

Runs against the Sentinel group of `scripts/services.sh up sentinel` (a primary, a replica and three Sentinels on
their own ports, beside the shared Redis), started here when it is not running. Failovers here are Sentinel's own
(SENTINEL FAILOVER); the fault test in test_faults.py kills the primary instead."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import requests
from django.test import override_settings

import config.redis
from tests import factories
from tests.conftest import WebServer, WorkerProcess
from tests.sentinel import MASTER, SENTINEL_ENV, SENTINELS, SentinelGroup

# Starts its own Sentinel group (scripts/services.sh up sentinel): run once per `make test`, not in its second pass.
pytestmark = pytest.mark.multinode

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def app_on_sentinel(sentinel_group: SentinelGroup, monkeypatch: pytest.MonkeyPatch) -> Iterator[SentinelGroup]:
    """This process's settings pointed at the Sentinel group, with a fresh app Redis client."""
    with override_settings(
        REDIS_SENTINELS=SENTINELS, REDIS_SENTINEL_MASTER=MASTER, REDIS_URL=SENTINEL_ENV["REDIS_URL"]
    ):
        monkeypatch.setattr(config.redis, "_client", None)
        monkeypatch.setattr(config.redis, "_scripts", {})
        yield sentinel_group
    monkeypatch.setattr(config.redis, "_client", None)


def _settings_with(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = (
        "import json, django; django.setup(); from django.conf import settings as s; print(json.dumps("
        "[s.CELERY_BROKER_URL, s.CELERY_BROKER_TRANSPORT_OPTIONS.get('master_name'),"
        " s.CACHES['default']['OPTIONS'].get('pool_class'), s.REDIS_SENTINELS]))"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=os.environ | {"DJANGO_SETTINGS_MODULE": "config.settings"} | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_settings_behind_sentinel() -> None:
    result = _settings_with(
        {"REDIS_SENTINELS": "10.0.0.1:26379,10.0.0.2", "REDIS_SENTINEL_MASTER": "m", "REDIS_URL": "redis://:pw@x/5"}
    )
    assert result.returncode == 0, result.stderr
    broker, master, pool_class, sentinels = json.loads(result.stdout)
    assert broker == "sentinel://:pw@10.0.0.1:26379/5;sentinel://:pw@10.0.0.2:26379/5"
    assert master == "m"
    assert pool_class == "config.redis.SentinelMasterPool"
    assert sentinels == [["10.0.0.1", 26379], ["10.0.0.2", 26379]]
    # WAIT on the app's Redis would say nothing about another broker's replicas.
    refused = _settings_with({"INGEST_REDIS_MIN_REPLICAS": "1", "CELERY_BROKER_URL": "redis://127.0.0.1:6399/0"})
    assert refused.returncode != 0
    assert "INGEST_REDIS_MIN_REPLICAS needs Celery's broker to be REDIS_URL's Redis" in refused.stderr


def _until_ok(action: Any, timeout: float = 30) -> Any:
    """`action()` once Redis answers again: during a failover there is briefly no primary."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return action()
        except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_the_app_client_follows_a_failover(app_on_sentinel: SentinelGroup) -> None:
    group = app_on_sentinel
    client = config.redis.get_redis()
    key = f"test:sentinel:{uuid.uuid4()}"
    client.set(key, "before")
    first = group.primary()
    second = group.failover()
    assert second != first
    # The same client object, no restart: its next commands reach the promoted replica, which has the key.
    assert config.redis.get_redis() is client
    _until_ok(lambda: client.set(key + ":after", "after"))
    assert client.get(key) == b"before"
    assert group.primary_client().get(key + ":after") == b"after"
    # Lua scripts too (the admission, throttles and queue counter are scripts): the new primary had none cached.
    assert _until_ok(lambda: config.redis.script("return 7")(keys=[], args=[])) == 7
    client.delete(key, key + ":after")
    group.wait_ready()


def test_django_cache_goes_to_the_primary(app_on_sentinel: SentinelGroup) -> None:
    from django.conf import settings
    from django.core.cache import caches

    # settings.CACHES as config/settings.py builds it with REDIS_SENTINELS set (test_settings_behind_sentinel)
    options = settings.CACHES["default"]["OPTIONS"] | {"pool_class": "config.redis.SentinelMasterPool"}
    # Behind Sentinel only the database number of LOCATION counts: the group's, as primary_client() reads it.
    location = SENTINEL_ENV["REDIS_URL"]
    with override_settings(CACHES={"default": settings.CACHES["default"] | {"OPTIONS": options, "LOCATION": location}}):
        cache = caches.create_connection("default")
    cache.set("test:sentinel:cache", 41)
    assert cache.get("test:sentinel:cache") == 41
    assert any(b"test:sentinel:cache" in key for key in app_on_sentinel.primary_client().keys("*sentinel:cache"))
    cache.delete("test:sentinel:cache")


def _published(reader: Any, wanted: set[str], timeout: float = 60) -> dict[str, int]:
    """How often each wanted event reached the topic (others may be writing to it too)."""
    seen: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and set(seen) != wanted:
        for records in reader.consumer.poll(timeout_ms=500).values():
            for record in records:
                event_id = dict(record.headers or []).get("event_id", b"").decode()
                if event_id in wanted:
                    seen[event_id] = seen.get(event_id, 0) + 1
    return seen


def _post(server: WebServer, key: str, event: dict[str, Any]) -> requests.Response:
    headers = {"Content-Type": "application/json", "Authorization": f"Api-Key {key}"}
    return requests.post(f"{server.url}/api/v1/events", data=orjson.dumps(event), headers=headers, timeout=10)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("fast_paths", ["all", "none"])
def test_web_and_worker_follow_a_failover_without_restart(
    sentinel_group: SentinelGroup, default_routing: None, api_key: str, kafka_reader: Any, fast_paths: str
) -> None:
    """Both the atomic admission script (fast paths on) and apply_async through kombu's Sentinel transport (off)
    reach the new primary, and the worker, consuming through Sentinel, takes the tasks queued there."""
    env = SENTINEL_ENV | {"INGEST_FAST_PATHS": fast_paths, "INGEST_KEY_CACHE_SECONDS": "120s"}
    reader = kafka_reader("user.activities")
    web = WebServer(workers=1, extra_env=env)
    worker = WorkerProcess(extra_env=env)
    try:
        before = _post(web, api_key, factories.activity())
        assert before.status_code == 202, before.text
        sentinel_group.failover()
        deadline = time.monotonic() + 30
        after = _post(web, api_key, factories.activity())
        while after.status_code == 503 and time.monotonic() < deadline:  # no primary for a moment
            time.sleep(0.3)
            after = _post(web, api_key, factories.activity())
        assert after.status_code == 202, after.text
        wanted = {before.json()["event_id"], after.json()["event_id"]}
        assert _published(reader, wanted) == {event_id: 1 for event_id in wanted}
    finally:
        worker.stop()
        web.stop()
        sentinel_group.wait_ready()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("fast_paths", ["all", "none"])
def test_min_replicas_not_reached_answers_503_and_the_retry_is_a_duplicate(
    sentinel_group: SentinelGroup, api_key: str, fast_paths: str
) -> None:
    """The group has one replica. Asking for one: 202. Asking for two: 503 with Retry-After, the task stays queued
    (it may well survive), and the client's retry of the same event is answered `duplicate`, not queued again."""
    primary = sentinel_group.primary_client()
    primary.delete("publish")  # no worker here: what is queued stays
    env = SENTINEL_ENV | {"INGEST_FAST_PATHS": fast_paths, "INGEST_REDIS_REPLICA_WAIT": "200ms"}
    one = WebServer(workers=1, extra_env=env | {"INGEST_REDIS_MIN_REPLICAS": "1"})
    two = WebServer(workers=1, extra_env=env | {"INGEST_REDIS_MIN_REPLICAS": "2"})
    try:
        assert _post(one, api_key, factories.activity()).status_code == 202
        assert primary.llen("publish") == 1
        event = factories.activity(event_id=str(uuid.uuid4()))
        refused = _post(two, api_key, event)
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"]
        assert "replicas" in refused.json()["error"]
        assert primary.llen("publish") == 2
        retry = _post(one, api_key, event)
        assert retry.status_code == 202
        assert retry.json()["status"] == "duplicate"
        assert primary.llen("publish") == 2
    finally:
        one.stop()
        two.stop()
        primary.delete("publish")
