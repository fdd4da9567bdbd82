"""Counting in Kafka: the Kafka watcher process (bench.watch) as a bench phase starts, paces and reads it."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import orjson

from bench.processes import ROOT, stop_group
from bench.run_settings import Settings


class Watcher:
    def __init__(self, settings: Settings, name: str, batch_sizes: dict[int, int]) -> None:
        self.dir = settings.workdir
        self.name = name
        self.ready = self.dir / f"{name}-watch.ready"
        self.progress = self.dir / f"{name}-watch.progress"
        self.stop_file = self.dir / f"{name}-watch.stop"
        self.load_done_file = self.dir / f"{name}-watch.load-done"
        self.out = self.dir / f"{name}-watch.json"
        config = {
            "bootstrap_servers": settings.bootstrap,
            "topics": settings.topics,
            "source": settings.source,
            "tag": settings.tag,
            "sample_every": settings.sample_every,
            "batch_size": {str(k): v for k, v in batch_sizes.items()},
            "ready_file": str(self.ready),
            "progress_file": str(self.progress),
            "stop_file": str(self.stop_file),
            "load_done_file": str(self.load_done_file),
            "mode": settings.watch_mode,
            "offsets_interval": settings.offsets_interval,
            "isolation_level": settings.isolation_level,
        }
        config_path = self.dir / f"{name}-watch.config.json"
        config_path.write_bytes(orjson.dumps(config))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.watch", str(config_path), str(self.out)],
            cwd=ROOT,
            stdout=(self.dir / f"{name}-watch.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 60
        while not self.ready.exists():
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"kafka watcher failed to start, see {self.dir}/{name}-watch.log")
            time.sleep(0.1)

    def load_done(self) -> None:
        """From now on the watcher may spend CPU reading records."""
        self.load_done_file.touch()

    def pause(self) -> None:
        """No reading records while the load runs (deferred mode): only the cheap end-offsets poller."""
        self.load_done_file.unlink(missing_ok=True)

    def count(self, phase: int) -> int:
        """Records of `phase` read so far (deferred mode: only while reading is allowed)."""
        return self._progress(str(phase))

    def written(self) -> int:
        """Records written to the watched partitions since the start, anyone's (from end offsets; cheap)."""
        return self._progress("written")

    def _progress(self, key: str) -> int:
        try:
            return int(orjson.loads(self.progress.read_bytes()).get(key, 0))
        except (OSError, ValueError):
            return 0

    def wait_for(self, phase: int, expected: int, timeout: float, *, cap: float | None = None) -> bool:
        """Until `expected` records of `phase` were read. Gives up after `timeout` seconds without progress
        (reading a large backlog takes a while, and so does publishing it), or after `cap` seconds in all."""
        started = time.time()
        deadline = started + timeout
        last = -1
        while time.time() < deadline and (cap is None or time.time() < started + cap):
            count = self.count(phase)
            if count >= expected:
                return True
            if count > last:
                last = count
                deadline = time.time() + timeout
            if self.proc.poll() is not None:
                raise RuntimeError(f"kafka watcher died, see {self.dir}/{self.name}-watch.log")
            time.sleep(0.25)
        return False

    def finish(self) -> dict[str, Any]:
        self.stop_file.touch()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            stop_group(self.proc, 5)
        if not self.out.exists():
            raise RuntimeError(f"kafka watcher wrote no result, see {self.dir}/{self.name}-watch.log")
        result: dict[str, Any] = orjson.loads(self.out.read_bytes())
        return result
