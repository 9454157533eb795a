"""Which HTTP server stack for the edge: the same tiny app under each, one run.

Serves bench/apps/hello.py (bare ASGI, and the same answer through Starlette)
under uvicorn (h11 + asyncio, the baseline; httptools + uvloop) and granian,
each in its own process with one worker, and loads it with wrk (one thread,
concurrency 16 by default) from another process. Prints JSON with each
stack's throughput and latency and its ratio to the baseline measured in the
same run, and writes a bar chart to bench/out/http_stack.png.

    tips bench http_stack [--seconds 5] [--connections 16]

Needs `wrk` (Debian package `wrk`).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
PATH = "/v1/users/u1/tips/t1"


@dataclass(frozen=True)
class Stack:
    name: str
    argv: tuple[str, ...]  # {app} and {port} are filled in


UVICORN = (sys.executable, "-m", "uvicorn", "--no-access-log", "--log-level", "warning")
STACKS = [
    Stack(
        "uvicorn-h11-asyncio",
        (*UVICORN, "--http", "h11", "--loop", "asyncio", "--port", "{port}", "{app}"),
    ),
    Stack(
        "uvicorn-httptools-uvloop",
        (*UVICORN, "--http", "httptools", "--loop", "uvloop", "--port", "{port}", "{app}"),
    ),
    Stack(
        "granian",
        (
            sys.executable,
            "-m",
            "granian",
            "--interface",
            "asgi",
            "--workers",
            "1",
            "--log-level",
            "warning",
            "--port",
            "{port}",
            "{app}",
        ),
    ),
]
APPS = {"raw": "bench.apps.hello:raw", "starlette": "bench.apps.hello:starlette"}


@dataclass
class Result:
    stack: str
    app: str
    rps: float
    p50_ms: float
    p99_ms: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def parse_ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(port: int, seconds: int, connections: int) -> tuple[float, float, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            f"http://127.0.0.1:{port}{PATH}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = parse_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = parse_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    return rps, p50, p99


def measure(stack: Stack, app: str, seconds: int, connections: int) -> Result:
    port = free_port()
    argv = [a.format(port=port, app=APPS[app]) for a in stack.argv]
    server = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(port)
        run_wrk(port, 1, connections)  # warm-up
        rps, p50, p99 = run_wrk(port, seconds, connections)
    finally:
        server.terminate()
        server.wait(timeout=10)
    return Result(stack.name, app, rps, p50, p99)


def plot(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.stack}\n{r.app}" for r in results]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.bar(labels, [r.rps for r in results], color="#4C72B0")
    ax.set_ylabel("requests per second (wrk, one worker)")
    ax.set_title("HTTP stack for the edge: same app, same run")
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("http_stack needs wrk: apt-get install wrk")
    results = []
    for stack in STACKS:
        for app in APPS:
            print(f"[http_stack] {stack.name} / {app} ...", file=sys.stderr, flush=True)
            results.append(measure(stack, app, args.seconds, args.connections))
    base = next(r for r in results if r.stack == STACKS[0].name and r.app == "raw")
    plot(results, OUT / "http_stack.png")
    print(
        json.dumps(
            {
                "scenario": "http_stack",
                "connections": args.connections,
                "baseline": asdict(base),
                "results": [
                    {
                        **asdict(r),
                        "rps_ratio": round(r.rps / base.rps, 3),
                        "p50_ratio": round(r.p50_ms / base.p50_ms, 3),
                    }
                    for r in results
                ],
                "plot": str((OUT / "http_stack.png").relative_to(ROOT)),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
