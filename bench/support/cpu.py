"""CPU seconds spent by named process trees over a window (where a bench's cores go).

    meter = CpuMeter({"service": pid, "postgres": pg_pid, ...})
    meter.start(); ...; meter.stop() -> {"service": 1.23, ...}

Each entry counts the process and its descendants (user + system), or the
process alone for the names in ``alone`` (a bench that hosts the service in
its own process also parents the load's). Processes that exit inside the window lose
what they spent since ``start``.
"""

from __future__ import annotations

import time
from typing import Any

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


class MachineMeter:
    """The whole machine's CPU over a window (``psutil.cpu_times``): how busy it
    was and how much the hypervisor gave to other guests (steal, Linux only).
    With a ``CpuMeter``'s totals, ``stop`` also gives what processes the bench
    does not meter spent: a neighbour's load, which a noisy run's numbers should
    be read against. Shares are of the machine's CPU time over the window (all
    cores: 1.0 is every core busy)."""

    def __init__(self) -> None:
        self._start: Any = None

    def start(self) -> None:
        self._start = psutil.cpu_times()

    def stop(self, metered_seconds: float = 0.0) -> dict[str, float]:
        if self._start is None:
            return {}  # never started: no window to read
        now = psutil.cpu_times()
        spent = {f: getattr(now, f) - getattr(self._start, f) for f in now._fields}
        # Guest time is already inside user and nice.
        total = sum(v for f, v in spent.items() if not f.startswith("guest"))
        if total <= 0:
            return {}
        idle = spent["idle"] + spent.get("iowait", 0.0)
        steal = spent.get("steal", 0.0)
        busy = total - idle - steal
        return {
            "busy_share": round(busy / total, 3),
            "steal_share": round(steal / total, 3),
            "unmetered_share": round(max(busy - metered_seconds, 0.0) / total, 3),
        }


def speed_probe(repeats: int = 5) -> dict[str, float]:
    """This machine's speed now: the CPU milliseconds (this thread's) that two
    fixed workloads take, the fastest of ``repeats``. ``python``: the
    interpreter's own work (dicts, calls, small ints), which an empty RPC is
    mostly; ``memory``: random reads over 64 MiB, which lose most when another
    tenant of the host fills the shared caches. Taken before and after a load,
    it tells a slower machine from a slower program: with the same code, more
    CPU per call and a slower probe is the machine."""
    import numpy as np

    def python_work() -> None:
        d: dict[int, int] = {}
        for i in range(100_000):
            d[i & 1023] = d.get(i & 1023, 0) + i

    table = np.arange(8 * 1024 * 1024, dtype=np.int64)  # 64 MiB
    at = np.random.default_rng(0).integers(0, table.size, 1_000_000)

    def memory_work() -> None:
        table[at].sum()

    out = {}
    for name, work in (("python_ms", python_work), ("memory_ms", memory_work)):
        best = float("inf")
        for _ in range(repeats):
            start = time.thread_time()
            work()
            best = min(best, time.thread_time() - start)
        out[name] = round(1000 * best, 2)
    return out
