"""Scoring one decision's candidates: in process, through a scoring service, through Triton.

    tips bench scoring [--seconds 3] [--k 15] [--sweep 1 64 256] [--sweep-seconds 1.5]

A decision scores its K candidate rows (``policy.features.DIM`` columns) with
the exported model (decision 30). Four paths, each client in its own process
as the recommender would be, each server in its own process as the mesh runs
it:

- ``inproc``: ``policy.scoring.OnnxScorer``, ONNX Runtime in the caller's
  process (the recommender's default): the baseline;
- ``ml_serving``: ``MlServingInternalService.Score`` over mutual TLS (the
  caller presents the recommender's certificate) to a kernel server (its
  interceptors and caller check, as every service runs) scoring with ONNX
  Runtime: the hop ml_serving was;
- ``triton``: ``policy.scoring.TritonScorer`` (``tritonclient.grpc.aio``) to
  a real tritonserver (``tipsmesh.localinfra.LocalTriton``, as the Triton
  tests start it): the recommender's path with ``TIPS_RECOMMENDER_TRITON_URL``;
- ``ml_serving_triton``: ``Score`` to that server configured with the Triton,
  which it calls first (``FallbackScorer``, as ml_serving did).

ml_serving itself was removed on these numbers (docs/decisions.md 37), and
its contract is deprecated: the two ``ml_serving`` paths are served by this
script (``--serve``), with ``policy.scoring``'s scorers behind the deprecated
``Score``. The service measured before its removal (commit 57ce1b2) also
resolved the version and checked each row per call, so it cost its server
~100-300 us more per call than this stand-in (the decision gives both).

The tritonserver here is pytriton's, with only the Python backend: the model
runs in a backend stub process under ONNX Runtime (docs NOTES: Triton). A
production Triton runs ``onnxruntime_onnx`` in its own C++ process, so the
Triton server's CPU here is an upper bound; the client's side of a KServe
call, and the hop a scoring service adds in front of Triton, do not depend on it.

Each path is loaded at concurrency 1 and 16 with K candidates for
``--seconds``, then at concurrency 1 with each K of ``--sweep``; the paths
take turns at each point. Client CPU is the client process's own; server CPU
is the server process tree's (tritonserver with its backend stub), metered
from the client's GO to its answer. Before loading, every path scores the
same rows and must agree with the in-process scores (1e-4), and
``ml_serving_triton`` must report Triton as the runtime that scored.

Prints JSON (each path's numbers and its ratios to ``inproc`` from the same
run) and writes bench/out/scoring.{json,png} (the latency distributions).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support.cpu import CpuMeter

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
MODES = ("inproc", "ml_serving", "triton", "ml_serving_triton")
CHECK_SEED = 11  # the rows every path scores before the load, compared to inproc
CALL_TIMEOUT_S = 10.0


def log(message: str) -> None:
    print(f"[scoring] {message}", file=sys.stderr, flush=True)


def _identity(tls_dir: Path, name: str) -> dict[str, str]:
    """TIPS_TLS_* of the process ``name`` (certificates from ``tipsmesh.devcerts``)."""
    from tipsmesh.devcerts import identity

    who = identity(tls_dir, name)
    return {
        "TIPS_TLS_CA_FILE": str(who.ca_file),
        "TIPS_TLS_CERT_FILE": str(who.cert_file),
        "TIPS_TLS_KEY_FILE": str(who.key_file),
    }


def _client_settings(tls_dir: Path) -> Any:
    from kernel.settings import Settings

    env = _identity(tls_dir, "recommender")
    return Settings(
        tls_ca_file=env["TIPS_TLS_CA_FILE"],
        tls_cert_file=env["TIPS_TLS_CERT_FILE"],
        tls_key_file=env["TIPS_TLS_KEY_FILE"],
        log_level="WARNING",
    )


def _rows(k: int, seed: int) -> Any:
    import numpy as np

    from policy.features import DIM

    return np.random.default_rng(seed).normal(size=(k, DIM))


# --- the client process ------------------------------------------------------------------


async def _scorer(
    mode: str, target: str, repository: Path, tls_dir: Path
) -> tuple[Callable[[Any], Awaitable[Any]], Callable[[], Awaitable[None]]]:
    """(score rows -> scores, close) for ``mode``, as the recommender would call it."""
    import numpy as np

    from policy.onnx_export import MODEL_NAME
    from policy.scoring import OnnxScorer, TritonScorer

    if mode == "inproc":
        scorer = OnnxScorer(repository)

        async def nothing() -> None:
            return None

        return scorer.score, nothing
    if mode == "triton":
        triton = TritonScorer(target, timeout_s=CALL_TIMEOUT_S)
        return triton.score, triton.close

    from kernel.tls import secure_channel
    from tips.ml_serving.v1 import ml_serving_service_pb2 as pb
    from tips.ml_serving.v1 import ml_serving_service_pb2_grpc, model_pb2

    channel = secure_channel(target, _client_settings(tls_dir), server_name="ml_serving")
    stub = ml_serving_service_pb2_grpc.MlServingInternalServiceStub(channel)
    wanted = model_pb2.MODEL_RUNTIME_TRITON if mode == "ml_serving_triton" else None

    async def score(rows: Any) -> Any:
        request = pb.ScoreRequest(
            model_name=MODEL_NAME, rows=[pb.FeatureRow(values=r) for r in rows.tolist()]
        )
        reply = await stub.Score(request, timeout=CALL_TIMEOUT_S)
        if wanted is not None and reply.runtime != wanted:
            raise RuntimeError(f"{mode}: scored by runtime {reply.runtime}, not Triton")
        return np.array([r.scores[0] for r in reply.rows], dtype=np.float64)

    async def close() -> None:
        await channel.close()

    return score, close


async def _client(mode: str, target: str, repository: Path, tls_dir: Path) -> None:
    """Warm up, print the check rows' scores, then run each point the driver sends."""
    score, close = await _scorer(mode, target, repository, tls_dir)
    try:
        check = await score(_rows(15, CHECK_SEED))
        for k in (1, 15, 64, 256):  # connections, sessions, Triton's first calls
            for _ in range(20):
                await score(_rows(k, k))
        print(json.dumps({"check": check.tolist()}), flush=True)
        loop = asyncio.get_running_loop()
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
            if not line or line[0] != "GO":
                return
            k, concurrency, seconds = int(line[1]), int(line[2]), float(line[3])
            print(json.dumps(await _load(score, k, concurrency, seconds)), flush=True)
    finally:
        await close()


async def _load(
    score: Callable[[Any], Awaitable[Any]], k: int, concurrency: int, seconds: float
) -> dict[str, Any]:
    batches = [_rows(k, seed) for seed in range(64)]  # new rows per call, as decisions have
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def caller(offset: int) -> None:
        i = offset
        while (started := time.perf_counter()) < stop:
            await score(batches[i % len(batches)])
            latencies.append((time.perf_counter() - started) * 1000)
            i += 1

    began, cpu_began = time.perf_counter(), time.process_time()
    await asyncio.gather(*(caller(c) for c in range(concurrency)))
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu_began
    return {"count": len(latencies), "seconds": elapsed, "cpu_s": cpu, "lat": latencies}


# --- the driver --------------------------------------------------------------------------


class ScoringPath:
    """One path: its client process and the server processes whose CPU it costs."""

    def __init__(self, mode: str, client: subprocess.Popen[str], servers: dict[str, int]):
        self.mode = mode
        self.client = client
        self.servers = servers

    def read(self) -> dict[str, Any]:
        assert self.client.stdout is not None
        line = self.client.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.mode}: the bench client exited ({self.client.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def run(self, k: int, concurrency: int, seconds: float) -> dict[str, Any]:
        assert self.client.stdin is not None
        meter = CpuMeter(self.servers)
        meter.start()
        self.client.stdin.write(f"GO {k} {concurrency} {seconds}\n")
        self.client.stdin.flush()
        data = self.read()
        spent = meter.stop()
        count = data["count"]
        lat = sorted(data["lat"])
        server_us = {name: round(s / count * 1e6, 1) for name, s in spent.items()}
        client_us = round(data["cpu_s"] / count * 1e6, 1)
        return {
            "calls": count,
            "calls_per_s": round(count / data["seconds"]),
            "p50_ms": round(lat[len(lat) // 2], 3),
            "p99_ms": round(lat[min(int(len(lat) * 0.99), len(lat) - 1)], 3),
            "client_cpu_us_per_call": client_us,
            "server_cpu_us_per_call": server_us,
            "cpu_us_per_call": round(client_us + sum(server_us.values()), 1),
            "_lat": lat,
        }

    def close(self) -> None:
        if self.client.poll() is None:
            assert self.client.stdin is not None
            self.client.stdin.write("EXIT\n")
            self.client.stdin.flush()
            try:
                self.client.wait(30)
            except subprocess.TimeoutExpired:
                self.client.kill()


def _env(extra: dict[str, str]) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("TIPS_")}
    return {**keep, "PYTHONPATH": f"{ROOT}:{ROOT / 'gen' / 'python'}", **extra}


# --- the scoring service (the hop ml_serving was) ------------------------------------------


async def _serve(repository: Path, tls_dir: Path, triton_url: str) -> None:
    """``Score`` on a kernel server over mTLS: ONNX Runtime in this process, or
    Triton first with ONNX Runtime as its fallback; prints the port when serving."""
    import numpy as np

    from kernel.server import Started, serve
    from kernel.service import Binding, Runtime, ServiceDefinition, bind
    from kernel.settings import Settings
    from policy.scoring import FallbackScorer, OnnxScorer, Scorer, TritonScorer
    from tips.ml_serving.v1 import ml_serving_service_pb2 as pb
    from tips.ml_serving.v1 import ml_serving_service_pb2_grpc as pb_grpc
    from tips.ml_serving.v1 import model_pb2

    onnx = OnnxScorer(repository)
    fallback = (
        FallbackScorer(TritonScorer(triton_url, timeout_s=CALL_TIMEOUT_S), onnx)
        if triton_url
        else None
    )
    scorer: Scorer = fallback or onnx

    class ScoringHop(pb_grpc.MlServingInternalServiceServicer):  # type: ignore[misc]
        async def Score(self, request: Any, context: Any) -> Any:
            rows = np.array([r.values for r in request.rows], dtype=np.float32)
            scores = await scorer.score(rows)
            by_triton = fallback is not None and not fallback.using_fallback
            return pb.ScoreResponse(
                rows=[pb.ScoreRow(scores=[s]) for s in scores.tolist()],
                model_version=scorer.model_version,
                runtime=model_pb2.MODEL_RUNTIME_TRITON
                if by_triton
                else model_pb2.MODEL_RUNTIME_ONNX_RUNTIME,
            )

    async def build(runtime: Runtime) -> list[Binding]:
        return [bind(ScoringHop(), pb_grpc, pb, "MlServingInternalService")]

    env = _identity(tls_dir, "ml_serving")
    settings = Settings(
        tls_ca_file=env["TIPS_TLS_CA_FILE"],
        tls_cert_file=env["TIPS_TLS_CERT_FILE"],
        tls_key_file=env["TIPS_TLS_KEY_FILE"],
        log_level="WARNING",
    )
    definition = ServiceDefinition(name="ml_serving", build=build, uses_db=False, uses_bus=False)
    ready = Started()
    task = asyncio.create_task(serve(definition, settings, ready=ready, port=0))
    await ready.wait()
    assert ready.server is not None
    print(ready.server.port, flush=True)
    await task


def _start_server(
    tls_dir: Path, repository: Path, triton_url: str
) -> tuple[subprocess.Popen[str], str]:
    me = str(Path(__file__).resolve())
    proc = subprocess.Popen(
        [sys.executable, me, "--serve", str(repository), str(tls_dir), triton_url],
        stdout=subprocess.PIPE, text=True, env=_env({}), cwd=ROOT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    port = proc.stdout.readline().strip()
    if not port.isdigit():
        raise RuntimeError(f"the scoring server did not start ({proc.poll()})")
    return proc, f"127.0.0.1:{port}"


def _start_client(mode: str, target: str, repository: Path, tls_dir: Path) -> subprocess.Popen[str]:
    me = str(Path(__file__).resolve())
    return subprocess.Popen(
        [sys.executable, me, "--client", mode, target, str(repository), str(tls_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env({}), cwd=ROOT,
    )  # fmt: skip


def _repository(work: Path) -> Path:
    """A trained policy's export, with Triton's python-backend config beside it."""
    import numpy as np

    from policy.bandit import Policy
    from policy.features import DIM
    from policy.onnx_export import export, write_python_backend

    rng = np.random.default_rng(3)
    policy = Policy()
    for i in range(500):
        policy.update(f"tip-{i % 15}", rng.normal(size=DIM), float(rng.random() < 0.3))
    repository = work / "models"
    export(policy, repository)
    write_python_backend(repository)
    return repository


def _plot(points: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [p for p in points if p.endswith(("_c1", "_c16")) and p.startswith("k")][:2]
    fig, axes = plt.subplots(1, len(shown) + 1, figsize=(5.5 * (len(shown) + 1), 4))
    for ax, point in zip(axes, shown, strict=False):
        for mode, r in points[point].items():
            lat = r["_lat"]
            ax.plot(lat, [i / len(lat) for i in range(len(lat))], label=mode)
        ax.set_xscale("log")
        ax.set_xlabel("latency ms (log)")
        ax.set_ylabel("fraction of calls")
        ax.set_title(f"one decision's scores, {point.replace('_', ', ')}")
        ax.legend()
    bars = axes[-1]
    point = shown[0]
    client = [points[point][m]["client_cpu_us_per_call"] for m in MODES]
    server = [sum(points[point][m]["server_cpu_us_per_call"].values()) for m in MODES]
    bars.bar(MODES, client, label="client (recommender)")
    bars.bar(MODES, server, bottom=client, label="servers")
    bars.set_ylabel("CPU µs per call")
    bars.set_title(f"CPU per call, {point.replace('_', ', ')}")
    bars.tick_params(axis="x", labelrotation=20)
    bars.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def _ratios(result: dict[str, Any], base: dict[str, Any]) -> dict[str, float]:
    return {
        "p50": round(result["p50_ms"] / base["p50_ms"], 2),
        "p99": round(result["p99_ms"] / base["p99_ms"], 2),
        "calls_per_s": round(result["calls_per_s"] / base["calls_per_s"], 4),
        "cpu_per_call": round(result["cpu_us_per_call"] / base["cpu_us_per_call"], 2),
    }


async def _drive(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from tipsmesh.devcerts import ensure_mesh_certs
    from tipsmesh.localinfra import LocalTriton, triton_venv

    load_at_start = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="tips-bench-scoring-") as tmp:
        work = Path(tmp)
        tls_dir = work / "tls"
        ensure_mesh_certs(tls_dir, ["ml_serving", "recommender"])
        repository = _repository(work)
        log("building or reusing the Triton venv (tools/triton_env.sh)")
        venv = await asyncio.to_thread(triton_venv, ROOT)
        triton = LocalTriton(venv, repository, work / "triton.log")
        servers: list[subprocess.Popen[str]] = []
        paths: dict[str, ScoringPath] = {}
        try:
            log("starting tritonserver and two scoring servers")
            await asyncio.to_thread(triton.start)
            assert triton.process is not None
            onnx_proc, onnx_addr = _start_server(tls_dir, repository, "")
            servers.append(onnx_proc)
            fwd_proc, fwd_addr = _start_server(tls_dir, repository, triton.url)
            servers.append(fwd_proc)
            targets = {
                "inproc": ("", {}),
                "ml_serving": (onnx_addr, {"ml_serving": onnx_proc.pid}),
                "triton": (triton.url, {"triton": triton.process.pid}),
                "ml_serving_triton": (
                    fwd_addr,
                    {"ml_serving": fwd_proc.pid, "triton": triton.process.pid},
                ),
            }
            log("starting the clients (warm-up, and every path scores the same rows)")
            for mode in MODES:
                target, metered = targets[mode]
                client = _start_client(mode, target, repository, tls_dir)
                paths[mode] = ScoringPath(mode, client, metered)
            checks = {mode: np.array(path.read()["check"]) for mode, path in paths.items()}
            for mode, scores in checks.items():
                np.testing.assert_allclose(scores, checks["inproc"], atol=1e-4, err_msg=mode)

            plan = [(args.k, 1, args.seconds), (args.k, 16, args.seconds)]
            plan += [(k, 1, args.sweep_seconds) for k in args.sweep if k != args.k]
            points: dict[str, dict[str, dict[str, Any]]] = {}
            step, steps = 0, len(plan) * len(MODES)
            for k, concurrency, seconds in plan:
                point = f"k{k}_c{concurrency}"
                points[point] = {}
                for mode in MODES:
                    step += 1
                    log(f"{step}/{steps}: {mode}, K={k}, concurrency {concurrency}, {seconds} s")
                    points[point][mode] = paths[mode].run(k, concurrency, seconds)
        finally:
            for path in paths.values():
                path.close()
            for proc in servers:
                proc.terminate()
            for proc in servers:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            await asyncio.to_thread(triton.stop)

    for results in points.values():
        base = results["inproc"]
        for r in results.values():
            r["ratio_to_inproc"] = _ratios(r, base)
            r["added_p50_ms"] = round(r["p50_ms"] - base["p50_ms"], 3)
            r["added_cpu_us_per_call"] = round(r["cpu_us_per_call"] - base["cpu_us_per_call"], 1)
        # What a scoring service adds in front of Triton, measured against Triton alone.
        ahead, alone = results["ml_serving_triton"], results["triton"]
        ahead["added_over_triton"] = {
            "p50_ms": round(ahead["p50_ms"] - alone["p50_ms"], 3),
            "p99_ms": round(ahead["p99_ms"] - alone["p99_ms"], 3),
            "cpu_us_per_call": round(ahead["cpu_us_per_call"] - alone["cpu_us_per_call"], 1),
        }
    report: dict[str, Any] = {
        "scenario": "scoring",
        "k": args.k,
        "dim": int(_rows(1, 0).shape[1]),
        "seconds": args.seconds,
        "sweep": args.sweep,
        # 1, 5 and 15 minute load averages: the machine is shared.
        "load_average_at_start": load_at_start,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "baseline": "inproc (ONNX Runtime in the caller's process), measured in the same run",
        "triton_backend": "python (pytriton's tritonserver 2.51; production: onnxruntime_onnx)",
        "points": {
            point: {m: {k: v for k, v in r.items() if not k.startswith("_")} for m, r in rs.items()}
            for point, rs in points.items()
        },
    }
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        _plot(points, OUT / "scoring.png")
        report["plot"] = str(OUT / "scoring.png")
    except ImportError:
        report["plot"] = "matplotlib not installed"
    (OUT / "scoring.json").write_text(json.dumps(report, indent=2))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per path at K, c1 and c16")
    parser.add_argument("--k", type=int, default=15, help="candidates per decision")
    parser.add_argument("--sweep", type=int, nargs="*", default=[1, 64, 256], help="more K, c1")
    parser.add_argument("--sweep-seconds", type=float, default=1.5)
    parser.add_argument("--client", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        repository, tls_dir, triton_url = args.serve
        asyncio.run(_serve(Path(repository), Path(tls_dir), triton_url))
        return
    if args.client:
        mode, target, repository, tls_dir = args.client
        asyncio.run(_client(mode, target, Path(repository), Path(tls_dir)))
        return
    print(json.dumps(asyncio.run(_drive(args)), indent=2))


if __name__ == "__main__":
    main()
