"""Remove stale prometheus_client multiprocess files (run by `make run` before the web and worker start)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

import config
from config.redis import get_redis
from publisher import stats


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(path: Path) -> tuple[str, int] | None:
    """(host, pid) from `<type>[_<mode>]_<pid>.db` (host "") or `..._<host>-<pid>.db` as an older release named
    them; None if the name is not ours."""
    ident = path.stem.rsplit("_", 1)[-1]
    host, _, pid = ident.rpartition("-")
    if not pid.isdigit():
        return None
    return host, int(pid)


class Command(BaseCommand):
    help = (
        "Delete the multiprocess metric files (PROMETHEUS_MULTIPROC_DIR) of processes that are no longer running "
        "on this host, so /metrics starts from the processes alive now. --all deletes every file (only when no "
        "web or worker process is running); --stats also clears the publisher statistics kept in Redis."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--all", dest="everything", action="store_true", help="delete every file, running processes' too"
        )
        parser.add_argument(
            "--stats", dest="clear_stats", action="store_true", help="also clear /metrics/publisher statistics"
        )

    def handle(self, *args: Any, everything: bool, clear_stats: bool, **options: Any) -> None:
        directory = os.environ.get(config.MULTIPROC_ENV, "")
        if not directory:
            self.stdout.write(f"{config.MULTIPROC_ENV} is empty: multiprocess mode is off, nothing to reset")
        elif not Path(directory).is_dir():
            raise CommandError(f"{config.MULTIPROC_ENV}={directory!r} is not a directory")
        else:
            self._reset_files(Path(directory), everything=everything)
        if clear_stats:
            self._reset_stats()

    def _reset_files(self, directory: Path, *, everything: bool) -> None:
        me = config.prometheus_process_id()
        removed = kept = 0
        for path in sorted(directory.glob("*.db")):
            owner = _owner(path)
            stale = everything or path.stem.endswith("_" + me)
            if not stale and owner is not None:
                host, pid = owner
                stale = host == "" and not _alive(pid)  # another host's pids are not ours to judge
            if stale:
                path.unlink(missing_ok=True)
                removed += 1
            else:
                kept += 1
        self.stdout.write(
            f"metrics: removed {removed} stale file(s) from {directory}, kept {kept} of running processes"
        )

    def _reset_stats(self) -> None:
        client = get_redis()
        keys = list(client.scan_iter(match=f"{stats.totals_key().rsplit(':', 1)[0]}:*", count=500))
        if keys:
            client.delete(*keys)
        self.stdout.write(f"publisher statistics: removed {len(keys)} key(s)")
