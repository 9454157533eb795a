"""bench/support/cpu.py: the MachineMeter (the machine's busy, steal and unmetered
shares over a window) and the speed probe, which the decision bench reads a slow
round against."""

from __future__ import annotations

import time

from bench.support.cpu import MachineMeter, speed_probe


def _burn(seconds: float) -> float:
    """Spin this process for ``seconds`` of its own CPU; returns the CPU it spent."""
    start = time.process_time()
    while time.process_time() - start < seconds:
        sum(range(1000))
    return time.process_time() - start


def test_a_busy_window_shows_as_busy_and_what_was_metered_is_not_other_load() -> None:
    meter = MachineMeter()
    meter.start()
    spent = _burn(0.3)
    seen = meter.stop(metered_seconds=spent)
    assert set(seen) == {"busy_share", "steal_share", "unmetered_share"}
    assert all(0.0 <= v <= 1.0 for v in seen.values())
    assert seen["busy_share"] > 0
    # Our own spinning was metered, so it is not counted as the machine's other load.
    assert seen["unmetered_share"] < seen["busy_share"]

    meter.start()
    _burn(0.3)
    unmetered = meter.stop()  # the same spinning, this time not metered
    assert unmetered["unmetered_share"] == unmetered["busy_share"]


def test_the_speed_probe_times_both_workloads() -> None:
    seen = speed_probe(repeats=2)
    assert set(seen) == {"python_ms", "memory_ms"}
    assert all(v > 0 for v in seen.values())  # each workload took CPU time


def test_a_meter_never_started_reports_nothing() -> None:
    assert MachineMeter().stop() == {}
