"""gunicorn settings for the web process: `gunicorn -c config/gunicorn.py config.wsgi:application`.

Command-line flags (bind, workers, logging) still win. Threaded workers with keep-alive: a producer sending
single events keeps its connection instead of paying a new one per request, and a worker keeps serving while
a request waits on Redis (WEB_THREADS, default 16). Requests in flight together are admitted as one group
(ingestion.services), so more threads also mean fewer Redis round trips and fewer publish tasks per event
(bench, single events: 4 threads 563/s, 16 threads 859/s). Also the hooks prometheus_client's multiprocess
mode needs. Importing `config` first points every worker at PROMETHEUS_MULTIPROC_DIR (see
config/__init__.py) before prometheus_client is loaded.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

import config as _project  # not `config`: gunicorn reads every module-level name as a setting


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread that allocates its own malloc arena; with 16 threads per worker the arenas
    fragment and keep memory (bench, batches: largest web process 147 -> 127 MiB peak RSS with 2 arenas).
    Set here, in the master, so every forked worker inherits it; elsewhere than glibc this does nothing."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


_limit_malloc_arenas()

worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "16"))
keepalive = 5


def child_exit(server: Any, worker: Any) -> None:
    """A worker exited (restart, timeout, crash): drop its live-gauge files; its counters keep counting in
    the totals."""
    if os.environ.get(_project.MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(_project.prometheus_process_id(worker.pid))
