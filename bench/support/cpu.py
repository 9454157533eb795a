"""CPU seconds spent by named process trees over a window (where a bench's cores go).

    meter = CpuMeter({"service": pid, "postgres": pg_pid, ...})
    meter.start(); ...; meter.stop() -> {"service": 1.23, ...}

Each entry counts the process and its descendants (user + system), or the
process alone for the names in ``alone`` (a bench that hosts the service in
its own process also parents the load's). Processes that exit inside the window lose
what they spent since ``start``.
"""

from __future__ import annotations

import psutil


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _cpu(procs: list[psutil.Process]) -> dict[int, float]:
    out = {}
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        out[proc.pid] = times.user + times.system
    return out


class CpuMeter:
    def __init__(self, roots: dict[str, int], *, alone: frozenset[str] = frozenset()) -> None:
        self.roots = roots
        self.alone = alone
        self._start: dict[str, dict[int, float]] = {}

    def _procs(self, name: str, pid: int) -> list[psutil.Process]:
        if name not in self.alone:
            return _tree(pid)
        try:
            return [psutil.Process(pid)]
        except psutil.NoSuchProcess:
            return []

    def start(self) -> None:
        self._start = {name: _cpu(self._procs(name, pid)) for name, pid in self.roots.items()}

    def stop(self) -> dict[str, float]:
        spent = {}
        for name, pid in self.roots.items():
            before = self._start.get(name, {})
            now = _cpu(self._procs(name, pid))
            spent[name] = round(sum(t - before.get(p, 0.0) for p, t in now.items()), 2)
        return spent
