"""The edge's cost: the same unary RPC through the gateway and straight to gRPC, one run.

Compiles bench/protos (an annotated EchoService), starts its grpc.aio backend
and `python -m gateway --descriptor-set ... --no-auth` as separate processes,
then loads, at the same concurrency:
- direct: a grpc.aio client process (bench/grpc_load.py) calling GetEcho;
- gateway: `hey` sending GET /v1/users/u1/echoes/e1?pageSize=10, which the
  gateway transcodes into the same GetEcho call;
- floor: `hey` on the gateway's /healthz (the HTTP stack alone).
Prints JSON with throughput and p50/p99 of each, the gateway/direct ratios
(goal: throughput >= 0.7, added p50 < 1 ms) and writes the latency
distributions to bench/out/gateway.png.

    tips bench gateway [--seconds 5] [--concurrency 16]

Needs `hey` (Debian package `hey`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from support.echo_protos import compile_protos

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(name: str, latencies: list[float], seconds: float) -> dict[str, float | str | int]:
    return {
        "path": name,
        "requests": len(latencies),
        "rps": round(len(latencies) / seconds, 1),
        "p50_ms": round(percentile(latencies, 0.50), 3),
        "p99_ms": round(percentile(latencies, 0.99), 3),
        "mean_ms": round(statistics.fmean(latencies), 3),
    }


def hey(url: str, seconds: float, concurrency: int) -> tuple[list[float], float]:
    subprocess.run(["hey", "-z", "1s", "-c", str(concurrency), url], capture_output=True)
    started = time.perf_counter()
    out = subprocess.run(
        ["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-o", "csv", url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    elapsed = time.perf_counter() - started
    rows = list(csv.DictReader(io.StringIO(out)))
    bad = [r for r in rows if r["status-code"] != "200"]
    if bad:
        raise RuntimeError(f"{len(bad)} non-200 answers from {url}, e.g. {bad[0]}")
    return [float(r["response-time"]) * 1000 for r in rows], elapsed


def plot(series: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, values in series.items():
        ordered = sorted(values)
        ax.plot(ordered, [i / len(ordered) for i in range(len(ordered))], label=name)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("GetEcho: through the gateway vs straight to gRPC (same run)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    if shutil.which("hey") is None:
        raise SystemExit("bench gateway needs hey: apt-get install hey")
    log = lambda text: print(f"[gateway bench] {text}", file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="tips-bench-") as tmp:
        pb_dir = Path(tmp)
        descriptor_set = compile_protos(pb_dir)
        backend_port, gateway_port = free_port(), free_port()
        backend = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "bench" / "support" / "echo_backend.py"),
                tmp,
                str(backend_port),
            ],
            stdout=subprocess.DEVNULL,
        )
        gateway = subprocess.Popen(
            [
                sys.executable, "-m", "gateway", "--descriptor-set", str(descriptor_set),
                "--upstream", f"benchecho.v1.EchoService=127.0.0.1:{backend_port}",
                "--listen", f"127.0.0.1:{gateway_port}", "--no-auth",
            ],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_port(backend_port, backend)
            wait_port(gateway_port, gateway)
            log(f"direct gRPC, concurrency {args.concurrency}, {args.seconds}s")
            direct_file = pb_dir / "direct.json"
            subprocess.run(
                [
                    sys.executable, str(ROOT / "bench" / "support" / "grpc_load.py"), tmp,
                    f"127.0.0.1:{backend_port}", str(args.concurrency), str(args.seconds),
                    str(direct_file),
                ],
                check=True,
            )  # fmt: skip
            direct_raw = json.loads(direct_file.read_text())
            base = f"http://127.0.0.1:{gateway_port}"
            log("through the gateway")
            via, via_s = hey(f"{base}/v1/users/u1/echoes/e1?pageSize=10", args.seconds,
                             args.concurrency)  # fmt: skip
            log("HTTP floor (/healthz)")
            floor, floor_s = hey(f"{base}/healthz", args.seconds, args.concurrency)
        finally:
            for proc in (gateway, backend):
                proc.terminate()
                proc.wait(timeout=15)
    direct = summary("direct gRPC", direct_raw["latencies_ms"], direct_raw["seconds"])
    through = summary("through the gateway", via, via_s)
    http_floor = summary("gateway /healthz (HTTP floor)", floor, floor_s)
    plot(
        {
            "direct gRPC": direct_raw["latencies_ms"],
            "through the gateway": via,
            "gateway /healthz": floor,
        },
        OUT / "gateway.png",
    )
    print(json.dumps({
        "scenario": "gateway",
        "concurrency": args.concurrency,
        "baseline": direct,
        "gateway": through,
        "http_floor": http_floor,
        "throughput_ratio": round(float(through["rps"]) / float(direct["rps"]), 3),
        "added_p50_ms": round(float(through["p50_ms"]) - float(direct["p50_ms"]), 3),
        "goals": {"throughput_ratio": ">= 0.7", "added_p50_ms": "< 1"},
        "plot": str((OUT / "gateway.png").relative_to(ROOT)),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
