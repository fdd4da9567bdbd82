"""gunicorn settings for the web process: `gunicorn -c config/gunicorn.py config.wsgi:application`.

Command-line flags (bind, workers, logging) still win; this file only adds the hooks prometheus_client's
multiprocess mode needs. Importing `config` first points every worker at PROMETHEUS_MULTIPROC_DIR (see
config/__init__.py) before prometheus_client is loaded.
"""

from __future__ import annotations

import os
from typing import Any

import config as _project  # not `config`: gunicorn reads every module-level name as a setting


def child_exit(server: Any, worker: Any) -> None:
    """A worker exited (restart, timeout, crash): drop its live-gauge files; its counters keep counting in
    the totals."""
    if os.environ.get(_project.MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(_project.prometheus_process_id(worker.pid))
