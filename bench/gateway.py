"""The edge's cost: one unary RPC straight to gRPC and through three HTTP/JSON proxies.

Compiles bench/protos (an annotated EchoService), starts its grpc.aio backend
and, as separate processes in front of it:
- ours: `python -m gateway --descriptor-set ... --no-auth` (our_gateway_command);
- grpc-gateway (Go), the original, generated and built from Debian's packages
  by bench/support/grpc_gateway_go.py (cached; skipped when it cannot be had);
- fastapi: a hand-written FastAPI endpoint (bench/support/fastapi_echo.py)
  calling the backend over one grpc.aio channel, on uvicorn + uvloop + httptools.
All three answer GET /v1/users/u1/echoes/e1?pageSize=10 with the same JSON
(checked before loading). Then, for --rounds rounds, in an order that rotates
every round, at the same concurrency:
- direct: a grpc.aio client process (bench/support/grpc_load.py) calling GetEcho,
  the baseline;
- each proxy loaded by `hey` for --seconds after a 1 s warm-up, with the CPU
  time of the proxy's process tree and of the backend read over exactly the
  measured window.
Prints JSON: per path, the median over rounds of requests, rps, p50/p99 and
CPU ms per request (proxy and backend), with each round's values; each proxy's
throughput ratio to direct and added p50; ours' CPU per request over Go's
(goals for ours: throughput ratio >= 0.7, added p50 < 1 ms at c16, CPU ratio
<= 1.3); the load average at start and end. Writes the latency distributions
and the CPU per request to bench/out/gateway.png.

    tips bench gateway [--seconds 5] [--concurrency 16] [--rounds 3]

Needs `hey` (Debian package `hey`); the Go column needs Debian's golang-go,
golang-grpc-gateway, golang-github-grpc-ecosystem-grpc-gateway-dev,
golang-google-grpc-dev, golang-goprotobuf-dev and protobuf-compiler (installed
when running as root).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import operator
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.cpu import CpuMeter
from support.echo_protos import compile_protos
from support.grpc_gateway_go import GoProxy, Unavailable, apt_install, ensure_binary

from tipsmesh.localinfra import free_port, free_ports

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = ROOT / "bench" / "support"
OUT = ROOT / "bench" / "out"
PROXIES = ("ours", "grpc_gateway_go", "fastapi")
LABELS = {
    "direct": "direct gRPC",
    "ours": "ours (python -m gateway)",
    "grpc_gateway_go": "grpc-gateway (Go)",
    "fastapi": "FastAPI, hand-written",
}
QUERIES = ("/v1/users/u1/echoes/e1?pageSize=10", "/v1/users/u1/echoes/e1")
DIRECT_WARMUP_CALLS = 200  # grpc_load.py's own warm-up: the backend serves them too
GOALS = {
    "throughput_ratio": ">= 0.7",
    "added_p50_ms": "< 1",
    "cpu_per_request_ratio_ours_to_go": "<= 1.3",
}


def log(text: str) -> None:
    print(f"[gateway bench] {text}", file=sys.stderr, flush=True)


def our_gateway_command(descriptor_set: Path, upstream: str, listen: str) -> list[str]:
    """How our gateway is started (one place, so flags such as --workers are easy to add)."""
    return [
        sys.executable, "-m", "gateway", "--descriptor-set", str(descriptor_set),
        "--upstream", f"benchecho.v1.EchoService={upstream}", "--listen", listen, "--no-auth",
    ]  # fmt: skip


def fastapi_command(pb_dir: Path, upstream: str, port: int) -> list[str]:
    return [sys.executable, str(SUPPORT / "fastapi_echo.py"), str(pb_dir), upstream, str(port)]


# -- processes ---------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start(name: str, argv: list[str], port: int, logs: Path, stack: contextlib.ExitStack) -> Server:
    """Start a server process (output to logs/NAME.log), stopped when `stack` closes."""
    logfile = stack.enter_context((logs / f"{name}.log").open("wb"))
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=logfile, stderr=subprocess.STDOUT)
    stack.callback(stop, proc)
    return Server(name, proc, port, logs / f"{name}.log")


def wait_port(server: Server, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            tail = server.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}:\n{tail}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", server.port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{server.name}: nothing listens on {server.port}")


# -- the answers -------------------------------------------------------------------------------


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def check_answers(proxies: dict[str, Server]) -> dict[str, Any]:
    """The proxies must answer each query with the same JSON; returns them, by query."""
    answers = {}
    for query in QUERIES:
        bodies = {name: get_json(server.base + query) for name, server in proxies.items()}
        if len({json.dumps(body, sort_keys=True) for body in bodies.values()}) != 1:
            raise RuntimeError(f"the proxies answer GET {query} differently: {bodies}")
        answers[query] = next(iter(bodies.values()))
    return answers


# -- one measurement ---------------------------------------------------------------------------


@dataclass
class Sample:
    """One path, one round."""

    latencies_ms: list[float]
    seconds: float
    backend_cpu_s: float
    backend_calls: int
    proxy_cpu_s: float | None = None

    def metrics(self) -> dict[str, float]:
        ordered = sorted(self.latencies_ms)
        requests = len(ordered)
        out = {
            "requests": requests,
            "rps": round(requests / self.seconds, 1),
            "p50_ms": round(ordered[int(0.50 * requests)], 3),
            "p99_ms": round(ordered[min(requests - 1, int(0.99 * requests))], 3),
        }
        if self.proxy_cpu_s is not None:
            out["cpu_ms_per_request"] = round(1000 * self.proxy_cpu_s / requests, 4)
        out["backend_cpu_ms_per_request"] = round(1000 * self.backend_cpu_s / self.backend_calls, 4)
        return out


def hey(url: str, seconds: float, concurrency: int) -> tuple[list[float], float]:
    started = time.perf_counter()
    out = subprocess.run(
        ["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-o", "csv", url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    elapsed = time.perf_counter() - started
    rows = list(csv.DictReader(io.StringIO(out)))
    bad = [r for r in rows if r["status-code"] != "200"]
    if bad or not rows:
        raise RuntimeError(f"{len(bad)} non-200 answers of {len(rows)} from {url}, e.g. {bad[:1]}")
    return [float(r["response-time"]) * 1000 for r in rows], elapsed


def measure_proxy(proxy: Server, backend: Server, seconds: float, concurrency: int) -> Sample:
    url = proxy.base + QUERIES[0]
    subprocess.run(["hey", "-z", "1s", "-c", str(concurrency), url], capture_output=True)
    meter = CpuMeter({"proxy": proxy.proc.pid, "backend": backend.proc.pid})
    meter.start()
    latencies, elapsed = hey(url, seconds, concurrency)
    cpu = meter.stop()
    return Sample(latencies, elapsed, cpu["backend"], len(latencies), cpu["proxy"])


def measure_direct(pb_dir: Path, backend: Server, seconds: float, concurrency: int) -> Sample:
    """grpc_load.py warms up inside its process, so the backend's CPU covers those calls too."""
    out = pb_dir / "direct.json"
    meter = CpuMeter({"backend": backend.proc.pid})
    meter.start()
    subprocess.run(
        [
            sys.executable, str(SUPPORT / "grpc_load.py"), str(pb_dir),
            f"127.0.0.1:{backend.port}", str(concurrency), str(seconds), str(out),
        ],
        check=True,
    )  # fmt: skip
    cpu = meter.stop()
    raw = json.loads(out.read_text())
    calls = len(raw["latencies_ms"]) + DIRECT_WARMUP_CALLS
    return Sample(raw["latencies_ms"], raw["seconds"], cpu["backend"], calls)


# -- results -----------------------------------------------------------------------------------


@dataclass
class PathResult:
    samples: list[Sample] = field(default_factory=list)

    def rounds(self) -> list[dict[str, float]]:
        return [sample.metrics() for sample in self.samples]

    def median(self, key: str) -> float:
        return statistics.median(r[key] for r in self.rounds())

    def report(self, label: str) -> dict[str, Any]:
        rounds = self.rounds()
        medians = {key: round(self.median(key), 4) for key in rounds[0]}
        return {"path": label, **medians, "rounds": rounds}

    def latencies(self) -> list[float]:
        return [value for sample in self.samples for value in sample.latencies_ms]


def paired(
    a: PathResult, b: PathResult, key: str, op: Callable[[float, float], float]
) -> list[float]:
    """op(a, b) for `key`, round by round (same round, same machine conditions)."""
    return [round(op(x[key], y[key]), 3) for x, y in zip(a.rounds(), b.rounds(), strict=True)]


def ratios(results: dict[str, PathResult]) -> dict[str, Any]:
    """Each proxy against direct, ours against Go: the median of each round's value."""
    direct = results["direct"]
    proxies = [name for name in PROXIES if name in results]
    by_round: dict[str, Any] = {
        "throughput_ratio": {
            p: paired(results[p], direct, "rps", operator.truediv) for p in proxies
        },
        "added_p50_ms": {p: paired(results[p], direct, "p50_ms", operator.sub) for p in proxies},
        "cpu_per_request_ratio_ours_to_go": None,
    }
    if "grpc_gateway_go" in results:
        by_round["cpu_per_request_ratio_ours_to_go"] = paired(
            results["ours"], results["grpc_gateway_go"], "cpu_ms_per_request", operator.truediv
        )

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    cpu = by_round["cpu_per_request_ratio_ours_to_go"]
    return {
        "throughput_ratio": {p: median(v) for p, v in by_round["throughput_ratio"].items()},
        "added_p50_ms": {p: median(v) for p, v in by_round["added_p50_ms"].items()},
        "cpu_per_request_ratio_ours_to_go": None if cpu is None else median(cpu),
        "ratios_by_round": by_round,
    }


def goals_met(summary: dict[str, Any]) -> dict[str, bool | None]:
    cpu = summary["cpu_per_request_ratio_ours_to_go"]
    return {
        "throughput_ratio": summary["throughput_ratio"]["ours"] >= 0.7,
        "added_p50_ms": summary["added_p50_ms"]["ours"] < 1,
        "cpu_per_request_ratio_ours_to_go": None if cpu is None else cpu <= 1.3,
    }


def plot(results: dict[str, PathResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cdf, cpu) = plt.subplots(1, 2, figsize=(14, 5), width_ratios=[3, 2])
    for name, result in results.items():
        ordered = sorted(result.latencies())
        cdf.plot(ordered, [i / len(ordered) for i in range(len(ordered))], label=LABELS[name])
    cdf.set_xscale("log")
    cdf.set_xlabel("latency (ms, log scale)")
    cdf.set_ylabel("fraction of requests")
    cdf.set_title("GetEcho latency, all rounds (same run)")
    cdf.grid(True, which="both", alpha=0.3)
    cdf.legend()
    names = list(results)
    for offset, key, label in (
        (-0.2, "cpu_ms_per_request", "proxy process tree"),
        (0.2, "backend_cpu_ms_per_request", "gRPC backend"),
    ):
        xs = [i + offset for i, name in enumerate(names) if key in results[name].rounds()[0]]
        shown = [name for name in names if key in results[name].rounds()[0]]
        bars = cpu.bar(xs, [results[n].median(key) for n in shown], width=0.38, label=label)
        for x, name in zip(xs, shown, strict=True):
            values = [r[key] for r in results[name].rounds()]
            cpu.scatter([x] * len(values), values, color="black", s=12, zorder=3)
        cpu.bar_label(bars, fmt="%.3f", fontsize=8)
    cpu.set_xticks(range(len(names)), [LABELS[n] for n in names], rotation=15, fontsize=8)
    cpu.set_ylabel("CPU ms per request (bars: median; dots: rounds)")
    cpu.set_title("CPU per request")
    cpu.grid(True, axis="y", alpha=0.3)
    cpu.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


# -- the run -----------------------------------------------------------------------------------


def go_proxy() -> GoProxy | str:
    """The built Go proxy, or why there is none."""
    try:
        return ensure_binary(log)
    except Unavailable as exc:
        log(f"grpc-gateway (Go) skipped: {exc}")
        return str(exc)


def start_proxies(
    tmp: Path, descriptor_set: Path, backend: Server, go: GoProxy | str, stack: contextlib.ExitStack
) -> dict[str, Server]:
    upstream = f"127.0.0.1:{backend.port}"
    # All at once: ports taken one at a time can repeat.
    ports = dict(zip(PROXIES, free_ports(len(PROXIES)), strict=True))
    commands = {"ours": our_gateway_command(descriptor_set, upstream, f"127.0.0.1:{ports['ours']}")}
    if isinstance(go, GoProxy):
        commands["grpc_gateway_go"] = go.command(f"127.0.0.1:{ports['grpc_gateway_go']}", upstream)
    commands["fastapi"] = fastapi_command(tmp, upstream, ports["fastapi"])
    servers = {name: start(name, argv, ports[name], tmp, stack) for name, argv in commands.items()}
    for server in servers.values():
        wait_port(server)
    return servers


def run_rounds(
    args: argparse.Namespace, tmp: Path, backend: Server, proxies: dict[str, Server]
) -> dict[str, PathResult]:
    names = ["direct", *proxies]
    results = {name: PathResult() for name in names}
    for number in range(args.rounds):
        order = names[number % len(names) :] + names[: number % len(names)]
        log(f"round {number + 1}/{args.rounds}: {', '.join(order)}")
        for name in order:
            log(f"  {LABELS[name]}, concurrency {args.concurrency}, {args.seconds}s")
            if name == "direct":
                sample = measure_direct(tmp, backend, args.seconds, args.concurrency)
            else:
                sample = measure_proxy(proxies[name], backend, args.seconds, args.concurrency)
            results[name].samples.append(sample)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("hey") is None:
        # The load generator is Debian's `hey`: installed as the Go toolchain is.
        if os.geteuid() == 0 and shutil.which("apt-get") is not None:
            apt_install(["hey"], lambda text: print(f"[gateway bench] {text}", file=sys.stderr))
        if shutil.which("hey") is None:
            raise SystemExit("bench gateway needs hey: apt-get install hey")
    load_start = [round(x, 2) for x in os.getloadavg()]
    go = go_proxy()
    with tempfile.TemporaryDirectory(prefix="tips-bench-") as name, contextlib.ExitStack() as stack:
        tmp = Path(name)
        descriptor_set = compile_protos(tmp)
        backend_port = free_port()
        backend_argv = [sys.executable, str(SUPPORT / "echo_backend.py"), name, str(backend_port)]
        backend = start("backend", backend_argv, backend_port, tmp, stack)
        wait_port(backend)
        proxies = start_proxies(tmp, descriptor_set, backend, go, stack)
        answers = check_answers(proxies)
        log(f"the proxies answer alike: {answers[QUERIES[0]]}")
        results = run_rounds(args, tmp, backend, proxies)
    summary = ratios(results)
    plot(results, OUT / "gateway.png")
    reports = {name: results[name].report(LABELS[name]) for name in results}
    command = our_gateway_command(Path("ECHO.binpb"), "BACKEND:PORT", "127.0.0.1:PORT")
    ours = {**reports["ours"], "command": shlex.join(["python", *command[1:]])}
    if isinstance(go, GoProxy):
        go_report: dict[str, Any] = {**reports["grpc_gateway_go"], "build": go.report()}
    else:
        go_report = {"skipped": go}
    print(json.dumps({
        "scenario": "gateway",
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "machine": {"cpu_count": os.cpu_count(), "loadavg_start": load_start,
                    "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        "answer": answers[QUERIES[0]],
        "baseline": reports["direct"],
        "ours": ours,
        "grpc_gateway_go": go_report,
        "fastapi": reports["fastapi"],
        **summary,
        "goals": GOALS,
        "goals_met_by_ours": goals_met(summary),
        "notes": "medians over rounds; ratios are the median of each round's ratio; "
                 "direct's backend CPU includes grpc_load.py's 200 warm-up calls",
        "plot": str((OUT / "gateway.png").relative_to(ROOT)),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
