"""CPU time and memory of process trees, read from /proc (Linux; no psutil needed)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    cpu_seconds: float  # utime + stime of the process itself
    name: str


def _stat(pid: int) -> ProcStat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces or parentheses itself.
    name = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    return ProcStat(pid, int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS, name)


def all_processes() -> dict[int, ProcStat]:
    result = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                result[stat.pid] = stat
    return result


def tree(root: int, processes: dict[int, ProcStat] | None = None) -> list[ProcStat]:
    """The process and all its descendants that are alive now."""
    procs = processes if processes is not None else all_processes()
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in procs:
            found.append(procs[pid])
            todo.extend(children.get(pid, []))
    return found


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        stat = _stat(pid)
        if stat is not None:
            out[pid] = stat.cpu_seconds
    return out


def status_kib(pid: int, field: str) -> int:
    """A `kB` line of /proc/<pid>/status (VmHWM = peak RSS, VmRSS = current), 0 if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def find_pid(*needles: str, without: str | None = None) -> int | None:
    """The first process whose command line contains every needle (e.g. the Kafka broker, redis-server), and not
    `without`."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if all(n in cmdline for n in needles) and not (without and without in cmdline) and int(entry) != os.getpid():
            return int(entry)
    return None


class TreeMeter:
    """CPU seconds of a process tree (or of several: a cluster's brokers) between `start()` and `stop()`, counting
    processes that appear in between (from their start) and those that disappear (up to the last sample). Peak RSS
    is VmHWM summed over the processes alive at `peak_rss_mib()` time (forked workers share pages, so the sum
    over-counts a little)."""

    def __init__(self, root: int, *more_roots: int) -> None:
        self.root = root
        self.roots = (root, *more_roots)
        self._start: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._end: dict[int, float] | None = None

    def _sample(self) -> dict[int, float]:
        return {p.pid: p.cpu_seconds for p in self._procs()}

    def _procs(self) -> list[ProcStat]:
        procs = all_processes()
        return [p for root in self.roots for p in tree(root, procs)]

    def start(self) -> None:
        self._start = self._sample()
        self._last = dict(self._start)

    def sample(self) -> None:
        self._last.update(self._sample())

    def stop(self) -> float:
        self.sample()
        self._end = dict(self._last)
        return self.cpu()

    def cpu(self) -> float:
        end = self._end if self._end is not None else self._last
        return sum(value - self._start.get(pid, 0.0) for pid, value in end.items())

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs()]

    def rss_mib_by_process(self) -> list[float]:
        """Current VmRSS of each process of the tree, MiB, the root first (the main process, then its children)."""
        return [status_kib(pid, "VmRSS") / 1024 for pid in self.pids()]

    def peak_rss_mib(self) -> tuple[float, float]:
        """(sum of VmHWM over the tree, largest single VmHWM), MiB."""
        peaks = [status_kib(pid, "VmHWM") for pid in self.pids()]
        return sum(peaks) / 1024, (max(peaks) if peaks else 0) / 1024
