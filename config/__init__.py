"""The Django project package.

Every entry point imports this package before anything else (manage.py and config.wsgi through
DJANGO_SETTINGS_MODULE, `celery -A config`, the web server's `python -m config.serve`), so this is where
prometheus_client is switched to multiprocess mode: each process writes its series to its own files in
PROMETHEUS_MULTIPROC_DIR and /metrics adds them up, so one scrape of any web process shows the whole pipeline
(every web worker and every Celery pool process). This must happen before prometheus_client is first
imported, which is why it lives here and not in settings. Files are named `<host>-<pid>` through the fast path
prometheus_values (fastpaths/), `<pid>` without it.

PROMETHEUS_MULTIPROC_DIR: default `<repo>/.data/prometheus` (created when missing); an empty value turns
multiprocess mode off (each process then reports only its own series). Under pytest the default is a fresh
temporary directory per test session instead, so suites running side by side, or a `make run` wiping stale
files, never mix or remove each other's counters (processes the suite starts inherit it).
"""

from __future__ import annotations

import functools
import operator
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from config.env import install_env_error_hook, load_env_file

# First, before anything reads a variable: a missing or bad one is reported in one line, and the local .env
# (git-ignored, written by `make`) fills in what the real environment does not set.
install_env_error_hook()
load_env_file()

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DEFAULT_MULTIPROC_DIR = Path(__file__).resolve().parent.parent / ".data" / "prometheus"

# Files are named after the process; the host name keeps processes of two containers sharing one directory
# (web and worker on a shared volume, each with its own PID namespace) from writing to the same file.
PROCESS_HOST = (socket.gethostname() or "host").replace("_", "-")
_process_id = [f"{PROCESS_HOST}-{os.getpid()}"]


def _refresh_process_id() -> None:
    _process_id[0] = f"{PROCESS_HOST}-{os.getpid()}"


# prometheus_client asks for the process id on every increment: a C-level lookup of a value refreshed after
# each fork (granian's workers and Celery's pool fork with os.fork) costs less than its own default, os.getpid()
# (fast path prometheus_values, installed below).
os.register_at_fork(after_in_child=_refresh_process_id)


_host_named = [False]  # fast path prometheus_values installed: files named <host>-<pid>, else <pid>


def prometheus_process_id(pid: int | None = None) -> str:
    """The name prometheus_client gives this process's (or `pid`'s) files: `<host>-<pid>` with the fast path
    prometheus_values, prometheus_client's own `<pid>` without it."""
    if not _host_named[0]:
        return str(os.getpid() if pid is None else pid)
    return _process_id[0] if pid is None else f"{PROCESS_HOST}-{pid}"


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
    from fastpaths import prometheus_values

    identifier: Callable[[], str] = functools.partial(operator.getitem, _process_id, 0)  # type: ignore[assignment]
    _host_named[0] = prometheus_values.install(identifier)


_setup_prometheus_multiprocess()

from config.celery import app as celery_app  # noqa: E402  (after the multiprocess setup, on purpose)

__all__ = ("DEFAULT_MULTIPROC_DIR", "MULTIPROC_ENV", "PROCESS_HOST", "celery_app", "prometheus_process_id")
