"""The load generator process (bench.loadgen) for a phase: its configuration (the API, the request bodies) and
its run."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import orjson

from bench import events as bench_events
from bench.processes import ROOT
from bench.run_settings import Settings
from bench.tiers import Tiers


def api_config(settings: Settings, tiers: Tiers, phase: str, single: bool, variants: int) -> dict[str, Any]:
    templates = bench_events.body_templates(
        tag=settings.tag,
        phase=bench_events.PHASES[phase],
        batch_size=None if single else settings.batch_size,
        variants=variants,
    )
    return {
        "host": "127.0.0.1",
        "port": tiers.port,
        "path": "/api/v1/events" if single else "/api/v1/events/batch",
        "api_key": settings.api_key,
        "templates": [t.decode("latin-1") for t in templates],
        "content_encoding": "gzip" if settings.gzip else None,
    }


def run_loadgen(settings: Settings, name: str, config: dict[str, Any], *, wait: bool = True) -> Any:
    config_path = settings.workdir / f"{name}-loadgen.config.json"
    out_path = settings.workdir / f"{name}-loadgen.json"
    config_path.write_bytes(orjson.dumps(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.loadgen", str(config_path), str(out_path)],
        cwd=ROOT,
        stdout=(settings.workdir / f"{name}-loadgen.log").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    if not wait:
        return proc, out_path
    proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed, see {settings.workdir}/{name}-loadgen.log")
    return orjson.loads(out_path.read_bytes())
