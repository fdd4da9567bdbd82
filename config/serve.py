"""The web process: `python -m config.serve` serves `config.wsgi:application` with granian.

granian parses HTTP and handles sockets in Rust and runs the WSGI app on a pool of Python threads per worker
process, which costs less web CPU per request than gunicorn's threaded workers (docs/performance.md).

WEB_CONCURRENCY worker processes (default 2), WEB_THREADS Python threads each (default 48). At most
INGEST_WEB_ACTIVE_REQUESTS (32) of them work on single events and INGEST_WEB_ACTIVE_BATCHES (4) on batches at
once (ingestion.shedding): requests of one API key that are in flight together in a process are admitted as one
group (ingestion.services), so more active requests also mean fewer Redis round trips and publish tasks per event;
the threads beyond them see the requests that wait, and refuse them at once when the web tier cannot keep up (a
request beyond the threads waits in granian's queue, where the app cannot see it).
INGEST_BIND is host:port (default 127.0.0.1:8083). Command-line options win over the environment.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import os
import sys
from collections.abc import Sequence

from config.env import EnvError, env_int, env_str

APP = "config.wsgi:application"


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread that allocates its own malloc arena; with dozens of threads per worker the arenas
    fragment and keep memory. Set before the workers fork so each inherits it; elsewhere than glibc this does
    nothing."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def split_bind(bind: str, *, name: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise EnvError(f"{name}={bind!r} is not host:port, e.g. 127.0.0.1:8083 or 0.0.0.0:8083")
    return host.strip("[]"), int(port)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m config.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default=None, help="host:port (default: INGEST_BIND, else 127.0.0.1:8083)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: WEB_CONCURRENCY, 2)")
    parser.add_argument("--threads", type=int, default=None, help="threads per worker (default: WEB_THREADS, 48)")
    parser.add_argument("--access-log", action="store_true", help="log every request to stdout")
    parser.add_argument(
        "--shutdown-timeout", type=int, default=30, help="seconds a stopping worker may finish requests in flight"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        if args.bind is not None:
            host, port = split_bind(args.bind, name="--bind")
        else:
            host, port = split_bind(env_str("INGEST_BIND", "127.0.0.1:8083"), name="INGEST_BIND")
        workers = args.workers if args.workers is not None else env_int("WEB_CONCURRENCY", 2, minimum=1, maximum=64)
        threads = args.threads if args.threads is not None else env_int("WEB_THREADS", 48, minimum=1, maximum=512)
    except EnvError as exc:
        sys.exit(f"config.serve: {exc}")
    if workers < 1 or threads < 1:
        sys.exit("config.serve: --workers and --threads must be at least 1")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    try:
        # Every variable is checked once, here: a bad one stops the server with one line instead of every worker
        # failing to load the app.
        importlib.import_module(os.environ["DJANGO_SETTINGS_MODULE"])
    except EnvError as exc:
        sys.exit(f"config.serve: {exc}")
    limit_malloc_arenas()

    from granian import Granian
    from granian.constants import HTTPModes, Interfaces

    Granian(
        APP,
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        workers=workers,
        blocking_threads=threads,
        http=HTTPModes.http1,
        websockets=False,
        log_access=args.access_log,
        # A worker that dies (out of memory, a crash in an extension) is replaced instead of stopping the server.
        respawn_failed_workers=True,
        workers_kill_timeout=args.shutdown_timeout,
    ).serve()


if __name__ == "__main__":
    main()
