"""What one bench phase runs with (`Settings`), and the run's tag that marks its events."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Settings:
    duration: float
    warmup: float
    concurrency: int
    batch_size: int
    web_workers: int
    worker_concurrency: int
    redis_url: str
    bootstrap: str
    topics: list[str]
    api_key: str
    source: str
    tag: str
    sample_every: int
    drain_timeout: float
    memory_events: int
    workdir: Path
    own_redis_db: bool = True  # the bench's Redis database is not the application's: task keys may go too
    web_args: list[str] = field(default_factory=list)  # extra `config.serve` arguments, e.g. --threads
    worker_args: list[str] = field(default_factory=list)  # extra celery worker arguments
    worker_instances: int = 1  # celery workers side by side, e.g. two `--pool solo` workers instead of prefork
    rate: float | None = None  # events/s offered (open loop); None: closed loop at `concurrency`
    watch_mode: str = "deferred"
    offsets_interval: float = 0.05
    log: Any = print
    extra_env: dict[str, str] = field(default_factory=dict)
    gzip: bool = False  # bodies sent with Content-Encoding: gzip
    isolation_level: str = "read_uncommitted"  # how the watcher reads Kafka: read_committed for transactional rows


def new_tag() -> str:
    return uuid.uuid4().hex[:8]
