"""The Sentinel group of `scripts/services.sh up sentinel` (a Redis primary, one replica, three Sentinels on their
own ports beside the shared Redis), for the tests that run the service behind Sentinel (REDIS_SENTINELS)."""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

import redis
from redis.sentinel import MasterNotFoundError, Sentinel

ROOT = Path(__file__).resolve().parent.parent
SENTINELS = [("127.0.0.1", 26385), ("127.0.0.1", 26386), ("127.0.0.1", 26387)]
MASTER = "ingest"
DB = 12
SENTINEL_ENV = {
    "REDIS_SENTINELS": ",".join(f"{host}:{port}" for host, port in SENTINELS),
    "REDIS_SENTINEL_MASTER": MASTER,
    "REDIS_URL": f"redis://127.0.0.1:6380/{DB}",  # only its database number is used behind Sentinel
}


class SentinelGroup:
    def __init__(self) -> None:
        self.sentinel = Sentinel(SENTINELS, socket_timeout=1)

    def primary(self) -> tuple[str, int]:
        return self.sentinel.discover_master(MASTER)

    def promoted_from(self, old: tuple[str, int]) -> bool:
        """Whether the Sentinels name a primary other than `old` (while they vote, they name none)."""
        try:
            return self.primary() != old
        except MasterNotFoundError:
            return False

    def primary_pid(self) -> int:
        _, port = self.primary()
        return int((ROOT / ".data" / "sentinel" / f"redis-{port}" / "redis.pid").read_text().split()[0])

    def primary_client(self) -> redis.Redis:
        host, port = self.primary()
        return redis.Redis(host=host, port=port, db=DB, socket_timeout=5)

    def wait_ready(self, timeout: float = 60) -> None:
        """A primary the Sentinels agree on, with a replica in sync (after start-up or an earlier failover)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                client = self.primary_client()
                info = client.info("replication")
                if info["role"] == "master" and any(
                    isinstance(v, dict) and v.get("state") == "online" for v in info.values()
                ):
                    return
            except (redis.ConnectionError, redis.TimeoutError):
                pass
            time.sleep(0.3)
        raise RuntimeError("the Sentinel group has no primary with an online replica")

    def failover(self, timeout: float = 60) -> tuple[str, int]:
        """Sentinel's own failover; returns the new primary once the old one is a replica. (Until Sentinel has told
        it so, the old primary still takes the writes of clients connected to it, and loses them when it becomes a
        replica: see docs/operations.md on planned failovers.)"""
        before = self.primary()
        old = redis.Redis(*before, socket_timeout=5)
        deadline = time.monotonic() + timeout
        asked = 0.0
        while time.monotonic() < deadline:
            try:
                now = self.primary()
            except MasterNotFoundError:  # the Sentinels are voting: they name no primary meanwhile
                time.sleep(0.2)
                continue
            if now == before and time.monotonic() - asked > 5:
                # Sentinel refuses (or quietly drops) a failover while the previous one's failover-timeout runs
                # or the replica is not yet in sync: ask again until it happens.
                with contextlib.suppress(redis.ResponseError):
                    redis.Redis(*SENTINELS[0], socket_timeout=5).execute_command("SENTINEL", "FAILOVER", MASTER)
                asked = time.monotonic()
            new_role = self.primary_client().info("replication")["role"] if now != before else None
            if new_role == "master" and old.info("replication")["role"] == "slave":
                return now
            time.sleep(0.2)
        raise RuntimeError("no failover within the timeout")


def sentinel_services(*args: str) -> None:
    subprocess.run(["bash", "scripts/services.sh", *args, "sentinel"], cwd=ROOT, check=True, timeout=180)


def sentinel_running() -> bool:
    return (
        subprocess.run(["bash", "scripts/services.sh", "status", "sentinel"], cwd=ROOT, capture_output=True).returncode
        == 0
    )
