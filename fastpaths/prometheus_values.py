"""Fast path `prometheus_values`: prometheus_client's multiprocess value class, with a cheaper process id that
also names the host.

Replaces: prometheus_client's own multiprocess values (`values.ValueClass` as prometheus_client picks it when
PROMETHEUS_MULTIPROC_DIR is set: files named `<type>_<pid>.db`, the pid asked of os.getpid() on every
increment). Installing another value class means assigning the module global `prometheus_client.values
.ValueClass`, which prometheus_client documents nowhere.
Why: prometheus_client asks for the process id on every increment; a C-level lookup of a value refreshed after
each fork (config/__init__.py) costs less than os.getpid(). And the files are named `<host>-<pid>`, so the
processes of two containers sharing one directory (web and worker on a shared volume, each with its own PID
namespace) never write to the same file. Off, files are named by pid alone: on such a shared volume two
containers' processes with the same pid would mix their series.

Upstream change that would let it go: a public setting for the multiprocess process identifier in
prometheus_client (e.g. an environment variable or `multiprocess.set_process_identifier()`).
"""

from __future__ import annotations

from collections.abc import Callable

import fastpaths

NAME = "prometheus_values"
VERIFIED = {"prometheus-client": "0.26.0"}


def enabled() -> bool:
    return fastpaths.gate(NAME, VERIFIED)


def install(process_identifier: Callable[[], str]) -> bool:
    """Use `process_identifier` for the multiprocess files (before any metric is made). Returns whether it did."""
    if not enabled():
        return False
    from prometheus_client import values

    values.ValueClass = values.MultiProcessValue(process_identifier)
    return True
