"""What mutual TLS and the caller checks cost per hop, against plaintext, in one run.

    tips bench hop_security [--seconds 5] [--concurrency 16] [--rounds 3]

A kernel server (``kernel.server``: its interceptor, caller policy and token
verifier, as every service runs) serving the bench EchoService runs in its own
process, and a grpc.aio client process loads it at the same concurrency, in
three modes:

- ``plaintext``: ``TIPS_INSECURE``, no token: the baseline;
- ``mtls``: mutual TLS with certificates from ``tipsmesh.devcerts`` (the
  client presents the gateway's), and the peer-name check on every call;
- ``mtls_token``: and a user's access token on every call, verified by the
  server (``kernel.tokens``) and required by the handler. 64 users, one token
  each, as apps hold one: after its first call a token is a cache hit.

CPU seconds of the server and the client process over the load window,
divided by the calls made, give the CPU per RPC; "added" is against plaintext
in the same run. Modes alternate for ``--rounds`` rounds (the machine is
shared and noisy) and each mode's median round is reported. Also measured in
process: the CPU of verifying a token never seen before (the ES256 signature
check) and of one already verified.

Prints JSON and writes bench/out/hop_security.{json,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support.cpu import CpuMeter
from support.echo_protos import compile_protos

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
MODES = ("plaintext", "mtls", "mtls_token")
USERS = 64


def log(message: str) -> None:
    print(f"[hop_security] {message}", file=sys.stderr, flush=True)


def _settings(mode: str, tls_dir: Path, name: str, jwks_url: str = "") -> Any:
    from kernel.settings import Settings
    from tipsmesh.devcerts import identity

    if mode == "plaintext":
        return Settings(insecure=True, jwks_url=jwks_url or None, log_level="WARNING")
    who = identity(tls_dir, name)
    return Settings(
        insecure=False,
        tls_ca_file=str(who.ca_file),
        tls_cert_file=str(who.cert_file),
        tls_key_file=str(who.key_file),
        jwks_url=jwks_url or None,
        log_level="WARNING",
    )


# --- the server process ------------------------------------------------------------------


async def _serve(mode: str, tls_dir: Path, jwks_url: str) -> None:
    from benchecho.v1 import echo_pb2, echo_pb2_grpc

    from kernel.identity import require_caller
    from kernel.server import Started, serve
    from kernel.service import Binding, ServiceDefinition

    class Echo(echo_pb2_grpc.EchoServiceServicer):  # type: ignore[misc]
        async def GetEcho(self, request: Any, context: Any) -> Any:
            if mode == "mtls_token":
                require_caller()  # the user the verified token names
            return echo_pb2.GetEchoResponse(name=request.name, title="Take a 10-minute walk")

    async def build(runtime: Any) -> list[Binding]:
        descriptor = echo_pb2.DESCRIPTOR.services_by_name["EchoService"]
        add = echo_pb2_grpc.add_EchoServiceServicer_to_server
        return [Binding(servicer=Echo(), add_to_server=add, descriptor=descriptor)]

    definition = ServiceDefinition(name="echo", build=build, uses_db=False, uses_bus=False)
    ready = Started()
    task = asyncio.create_task(
        serve(definition, _settings(mode, tls_dir, "echo", jwks_url), ready=ready, port=0)
    )
    await ready.wait()
    assert ready.server is not None
    print(ready.server.port, flush=True)
    await task


# --- the client process ------------------------------------------------------------------


async def _client(
    address: str, mode: str, tls_dir: Path, key: Path, conc: int, seconds: float
) -> dict[str, Any]:
    from benchecho.v1 import echo_pb2, echo_pb2_grpc

    from kernel.tls import secure_channel
    from tipsmesh.devtokens import TokenSigner

    signer = TokenSigner.load(key)
    with_token = mode == "mtls_token"
    auth = [signer.metadata(f"u_{i:03d}") if with_token else () for i in range(USERS)]
    settings = _settings(mode, tls_dir, "gateway")
    async with secure_channel(address, settings, server_name="echo") as channel:
        stub = echo_pb2_grpc.EchoServiceStub(channel)
        request = echo_pb2.GetEchoRequest(name="users/u1/echoes/e1", page_size=10)
        for i in range(USERS * 4):  # warm-up: connection, handshake, every token verified once
            await stub.GetEcho(request, metadata=auth[i % USERS])
        print("READY", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # GO
        latencies: list[float] = []
        counter = [0]
        stop = time.perf_counter() + seconds

        async def caller() -> None:
            while (started := time.perf_counter()) < stop:
                counter[0] += 1
                await stub.GetEcho(request, metadata=auth[counter[0] % USERS])
                latencies.append((time.perf_counter() - started) * 1000)

        began, cpu_began = time.perf_counter(), time.process_time()
        await asyncio.gather(*(caller() for _ in range(conc)))
        elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu_began
    # The client's own CPU (every thread): it exits before the driver could read it.
    return {"count": len(latencies), "seconds": elapsed, "cpu_s": cpu, "lat": latencies}


# --- the driver --------------------------------------------------------------------------


def _round(
    mode: str, pb_dir: Path, tls_dir: Path, key: Path, jwks_url: str, args: argparse.Namespace
) -> dict[str, Any]:
    env_path = f"{pb_dir}:{ROOT}:{ROOT / 'gen' / 'python'}"
    env = {"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"}
    me = str(Path(__file__).resolve())
    server = subprocess.Popen(
        [sys.executable, me, "--serve", mode, str(tls_dir), jwks_url],
        stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline().strip())
        out = pb_dir / f"{mode}.json"
        client = subprocess.Popen(
            [sys.executable, me, "--client", f"127.0.0.1:{port}", mode, str(tls_dir), str(key),
             str(args.concurrency), str(args.seconds), str(out)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT,
        )  # fmt: skip
        assert client.stdin is not None and client.stdout is not None
        if client.stdout.readline().strip() != "READY":
            raise RuntimeError(f"{mode}: the bench client did not start")
        meter = CpuMeter({"server": server.pid})
        meter.start()
        client.stdin.write("GO\n")
        client.stdin.flush()
        if client.wait(args.seconds + 60) != 0:
            raise RuntimeError(f"{mode}: the bench client failed")
        spent = meter.stop()
    finally:
        server.terminate()
        server.wait(30)
    data = json.loads(out.read_text())
    spent["client"] = data["cpu_s"]
    lat = sorted(data["lat"])
    count = data["count"]
    return {
        "rps": round(count / data["seconds"]),
        "p50_ms": round(lat[len(lat) // 2], 3),
        "p99_ms": round(lat[int(len(lat) * 0.99)], 3),
        "server_cpu_us_per_rpc": round(spent["server"] / count * 1e6, 1),
        "client_cpu_us_per_rpc": round(spent["client"] / count * 1e6, 1),
        "cpu_us_per_rpc": round((spent["server"] + spent["client"]) / count * 1e6, 1),
        "_lat": lat,
    }


def _token_costs(n: int = 2000) -> dict[str, float]:
    """CPU of verifying a new token (signature) and a known one (cache), in process."""
    import grpc

    from kernel.settings import Settings
    from kernel.tokens import verifier_from_settings
    from tipsmesh.devtokens import TokenIssuer

    issuer = TokenIssuer()
    # With a JWKS URL the auth channel is never opened.
    unused = lambda: grpc.aio.insecure_channel("127.0.0.1:1")  # noqa: E731
    verifier = verifier_from_settings(Settings(jwks_url=issuer.jwks_url), unused)
    tokens = [issuer.mint(f"u_{i}") for i in range(n)]

    async def verify_all() -> tuple[float, float]:
        await verifier.verify_token(issuer.mint("warm"))  # fetch the JWK Set first
        began = time.process_time()
        for token in tokens:
            await verifier.verify_token(token)
        cold = time.process_time() - began
        began = time.process_time()
        for token in tokens:
            await verifier.verify_token(token)
        return cold, time.process_time() - began

    cold, warm = asyncio.run(verify_all())
    issuer.jwks.stop()
    return {
        "new_token_cpu_us": round(cold / n * 1e6, 1),
        "verified_token_cpu_us": round(warm / n * 1e6, 2),
    }


def _median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(rounds, key=lambda r: r["cpu_us_per_rpc"])
    chosen = dict(ordered[len(ordered) // 2])
    chosen["cpu_us_per_rpc_rounds"] = [r["cpu_us_per_rpc"] for r in rounds]
    return chosen


def _plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, cdf) = plt.subplots(1, 2, figsize=(11, 4))
    server = [results[m]["server_cpu_us_per_rpc"] for m in MODES]
    client = [results[m]["client_cpu_us_per_rpc"] for m in MODES]
    bars.bar(MODES, server, label="server")
    bars.bar(MODES, client, bottom=server, label="client")
    bars.set_ylabel("CPU µs per RPC")
    bars.set_title("CPU per hop")
    bars.legend()
    for mode in MODES:
        lat = results[mode]["_lat"]
        cdf.plot(lat, [i / len(lat) for i in range(len(lat))], label=mode)
    cdf.set_xscale("log")
    cdf.set_xlabel("latency ms (log)")
    cdf.set_ylabel("fraction of calls")
    cdf.set_title("latency at the same concurrency")
    cdf.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        mode, tls_dir, jwks_url = args.serve
        asyncio.run(_serve(mode, Path(tls_dir), jwks_url))
        return
    if args.client:
        address, mode, tls_dir, key, conc, seconds, out = args.client
        result = asyncio.run(
            _client(address, mode, Path(tls_dir), Path(key), int(conc), float(seconds))
        )
        Path(out).write_text(json.dumps(result))
        return

    from tipsmesh.devcerts import ensure_mesh_certs
    from tipsmesh.devtokens import TokenIssuer

    with tempfile.TemporaryDirectory(prefix="tips-bench-hop-") as tmp:
        work = Path(tmp)
        pb_dir = work / "pb"
        pb_dir.mkdir()
        compile_protos(pb_dir)
        tls_dir = work / "tls"
        ensure_mesh_certs(tls_dir, ["echo", "gateway"])
        issuer = TokenIssuer()
        key = work / "signer.jwk"
        issuer.save(key)
        rounds: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
        try:
            for r in range(args.rounds):
                for mode in MODES:
                    log(f"round {r + 1}/{args.rounds}: {mode}, c{args.concurrency}")
                    rounds[mode].append(_round(mode, pb_dir, tls_dir, key, issuer.jwks_url, args))
        finally:
            issuer.jwks.stop()
    results = {mode: _median_round(rs) for mode, rs in rounds.items()}
    base = results["plaintext"]
    for mode in MODES:
        r = results[mode]
        r["added_cpu_us_per_rpc"] = round(r["cpu_us_per_rpc"] - base["cpu_us_per_rpc"], 1)
        r["added_server_cpu_us_per_rpc"] = round(
            r["server_cpu_us_per_rpc"] - base["server_cpu_us_per_rpc"], 1
        )
        r["cpu_ratio_to_plaintext"] = round(r["cpu_us_per_rpc"] / base["cpu_us_per_rpc"], 3)
        r["added_p50_ms"] = round(r["p50_ms"] - base["p50_ms"], 3)
    OUT.mkdir(parents=True, exist_ok=True)
    _plot(results, OUT / "hop_security.png")
    report = {
        "scenario": "hop_security",
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "modes": {
            m: {k: v for k, v in r.items() if not k.startswith("_")} for m, r in results.items()
        },
        "token_verification": _token_costs(),
        "baseline": "plaintext, measured in the same run",
        "plot": str(OUT / "hop_security.png"),
    }
    (OUT / "hop_security.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
