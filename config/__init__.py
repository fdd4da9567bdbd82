"""The Django project package.

Every entry point imports this package before anything else (manage.py and config.wsgi through
DJANGO_SETTINGS_MODULE, `celery -A config`, gunicorn's `-c config/gunicorn.py`), so this is where
prometheus_client is switched to multiprocess mode: each process writes its series to its own files in
PROMETHEUS_MULTIPROC_DIR and /metrics adds them up, so one scrape of any web process shows the whole pipeline
(every gunicorn worker and every Celery pool process). This must happen before prometheus_client is first
imported, which is why it lives here and not in settings.

PROMETHEUS_MULTIPROC_DIR: default `<repo>/.data/prometheus` (created when missing); an empty value turns
multiprocess mode off (each process then reports only its own series). Under pytest the default is a fresh
temporary directory per test session instead, so suites running side by side, or a `make run` wiping stale
files, never mix or remove each other's counters (processes the suite starts inherit it).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DEFAULT_MULTIPROC_DIR = Path(__file__).resolve().parent.parent / ".data" / "prometheus"

# Files are named after the process; the host name keeps processes of two containers sharing one directory
# (web and worker on a shared volume, each with its own PID namespace) from writing to the same file.
_HOST = (socket.gethostname() or "host").replace("_", "-")
_identity: list[int | str] = [0, ""]


def prometheus_process_id(pid: int | None = None) -> str:
    """The name prometheus_client gives this process's (or `pid`'s) files: `<host>-<pid>`."""
    if pid is not None:
        return f"{_HOST}-{pid}"
    current = os.getpid()
    if _identity[0] != current:  # called on every increment: format once per process
        _identity[0], _identity[1] = current, f"{_HOST}-{current}"
    return str(_identity[1])


def _setup_prometheus_multiprocess() -> None:
    value = os.environ.get(MULTIPROC_ENV)
    if value is None:
        if "pytest" in sys.modules:
            value = tempfile.mkdtemp(prefix="ingest-prometheus-")
            owner = os.getpid()
            import atexit

            atexit.register(lambda: os.getpid() == owner and shutil.rmtree(value, ignore_errors=True))
        else:
            value = str(DEFAULT_MULTIPROC_DIR)
        os.environ[MULTIPROC_ENV] = value
    if not value.strip():
        del os.environ[MULTIPROC_ENV]  # explicitly empty: single-process mode
        return
    try:
        Path(value).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from config.env import EnvError

        raise EnvError(f"{MULTIPROC_ENV}={value!r} is not a usable directory: {exc}") from None
    from prometheus_client import values

    values.ValueClass = values.MultiProcessValue(prometheus_process_id)


_setup_prometheus_multiprocess()

from config.celery import app as celery_app  # noqa: E402  (after the multiprocess setup, on purpose)

__all__ = ("DEFAULT_MULTIPROC_DIR", "MULTIPROC_ENV", "celery_app", "prometheus_process_id")
