"""The Django project package.

Every entry point imports this package before anything else (manage.py and config.wsgi through
DJANGO_SETTINGS_MODULE, `celery -A config`, the web server's `python -m config.serve`), so this is where
prometheus_client is switched to multiprocess mode: each process writes its series to its own files in
PROMETHEUS_MULTIPROC_DIR and /metrics adds them up, so one scrape of any web process shows the whole pipeline
(every web worker and every Celery pool process). This must happen before prometheus_client is first
imported, which is why it lives here and not in settings. Files are named by process id (prometheus_client's
own naming), so each host or container needs a directory of its own.

PROMETHEUS_MULTIPROC_DIR: default `<repo>/.data/prometheus` (created when missing); an empty value turns
multiprocess mode off (each process then reports only its own series). Under pytest the default is a fresh
temporary directory per test session instead, so suites running side by side, or a `make run` wiping stale
files, never mix or remove each other's counters (processes the suite starts inherit it).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from config.env import install_env_error_hook, load_env_file

# First, before anything reads a variable: a missing or bad one is reported in one line, and the local .env
# (git-ignored, written by `make`) fills in what the real environment does not set.
install_env_error_hook()
load_env_file()

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DEFAULT_MULTIPROC_DIR = Path(__file__).resolve().parent.parent / ".data" / "prometheus"


def prometheus_process_id(pid: int | None = None) -> str:
    """The name prometheus_client gives this process's (or `pid`'s) files: its process id."""
    return str(os.getpid() if pid is None else pid)


def _remove_at_exit(directory: str) -> None:
    import atexit

    owner = os.getpid()

    def remove() -> None:
        if os.getpid() == owner:  # not in forked children
            shutil.rmtree(directory, ignore_errors=True)

    atexit.register(remove)


def _setup_prometheus_multiprocess() -> None:
    value = os.environ.get(MULTIPROC_ENV)
    if value is None:
        if "pytest" in sys.modules:
            value = tempfile.mkdtemp(prefix="ingest-prometheus-")
            _remove_at_exit(value)
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


_setup_prometheus_multiprocess()

from config.celery import app as celery_app  # noqa: E402  (after the multiprocess setup, on purpose)

__all__ = ("DEFAULT_MULTIPROC_DIR", "MULTIPROC_ENV", "celery_app", "prometheus_process_id")
