"""Starting and stopping the bench's child processes: a free port, a process group stopped as a whole, waiting
until a server answers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


def wait_until_serving(
    proc: subprocess.Popen[bytes],
    port: int,
    *,
    ready: Callable[[urllib.error.HTTPError], bool],
    timeout: float,
    what: str,
    log_path: Path,
) -> None:
    """Until `GET /api/v1/events` on `port` gets an HTTP error answer (the POST-only route is up) that `ready`
    accepts; raises if `proc` exits first or `timeout` seconds pass."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited early, see {log_path}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/events", timeout=2)
        except urllib.error.HTTPError as exc:
            if ready(exc):
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} was not ready after {timeout:.0f} s")
