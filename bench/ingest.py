"""Ingest throughput: signals/s through the events service vs raw JetStream publish_async.

Starts a throwaway PostgreSQL and NATS, migrates, runs the events service as
``tips serve events`` would (its own process), and drives it from a client
process: ``--clients`` concurrent callers sending batches of ``--batch``
signals for ``--users`` users. The service's rate counts from the first call
until the TIPS_EVENTS stream holds every signal (gRPC -> PostgreSQL + outbox
-> relay -> JetStream). Baseline, measured in the same run on the same NATS:
raw JetStream ``publish_async`` of the same SignalRecorded payloads and
headers to a stream with the same settings, from one process, until every
ack arrived. Prints JSON (rates and ratio; goal >= 0.5; the CPU seconds each
process spent in both phases, which on a shared machine vary less than the
rates), progress on stderr, and plots bench/out/ingest.png. ``--profile``
records the service and its relay child with py-spy.

The relay runs as deployed (``tips up``, compose and Kubernetes set
``TIPS_EVENTS_RELAY_PROCESS=true``): in a child process of the service, so
ingest and publishing each get a core. ``--relay inline`` runs it in the
service's own loop instead (the default of a service embedded in a test).

    tips bench ingest [--signals 50000] [--batch 500] [--clients 4] [--users 20]
                      [--relay process|inline]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from support.cpu import CpuMeter
from support.services import start_service

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
RAW_STREAM = "BENCH_RAW"
RAW_SUBJECT = "bench.raw.signal_recorded"


def log(message: str) -> None:
    print(f"[ingest] {message}", file=sys.stderr, flush=True)


def _signals(count: int, batch: int, users: int) -> list[tuple[str, list[Any]]]:
    from kernel.timestamps import timestamp
    from tips.events.v1 import signal_pb2

    now = datetime.now(UTC)
    start, end = timestamp(now - timedelta(minutes=5)), timestamp(now)
    run = secrets.token_hex(3)
    out = []
    for b in range(count // batch):
        user = f"u_bench{b % users}_{run}"
        items = [
            signal_pb2.Signal(
                client_signal_id=f"{run}-{b}-{i}",
                kind=signal_pb2.SIGNAL_KIND_STEPS,
                source=signal_pb2.SIGNAL_SOURCE_PHONE,
                start_time=start,
                end_time=end,
                steps=signal_pb2.StepsPayload(count=1000 + i),
            )
            for i in range(batch)
        ]
        out.append((user, items))
    return out


# --- the client process -------------------------------------------------------------------


async def _client(
    address: str, count: int, batch: int, clients: int, users: int, key: Path
) -> None:
    import grpc

    from tips.events.v1 import events_service_pb2 as ev
    from tips.events.v1 import events_service_pb2_grpc as ev_grpc

    requests = [
        (user, ev.BatchIngestSignalsRequest(parent=f"users/{user}", signals=items))
        for user, items in _signals(count, batch, users)
    ]
    from tipsmesh.devtokens import TokenSigner

    signer = TokenSigner.load(key)  # one token per user, as an app holds one
    auth = {user: signer.metadata(user) for user, _ in requests}
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # GO
    retries = 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = ev_grpc.EventsServiceStub(channel)

        async def caller() -> None:
            nonlocal retries
            while requests:
                user, request = requests.pop()
                while True:
                    try:
                        response = await stub.BatchIngestSignals(
                            request, metadata=auth[user], timeout=30
                        )
                        assert response.accepted_count + response.duplicate_count == batch
                        break
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() not in (
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            grpc.StatusCode.UNAVAILABLE,
                        ):
                            raise
                        retries += 1
                        await asyncio.sleep(0.2)

        await asyncio.gather(*(caller() for _ in range(clients)))
    print(json.dumps({"retries": retries}), flush=True)


# --- measurements -------------------------------------------------------------------------


async def _stream_count(nats_url: str, stream: str) -> int:
    import nats

    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(stream)
        return int(info.state.messages)
    finally:
        await nc.close()


async def _wait_stream(
    nats_url: str, stream: str, target: int, started: float, limit_s: float
) -> list[tuple[float, int]]:
    """Poll the stream's message count until ``target``; the (seconds, count) curve."""
    import nats

    nc = await nats.connect(nats_url)
    curve: list[tuple[float, int]] = []
    try:
        js = nc.jetstream()
        while True:
            count = int((await js.stream_info(stream)).state.messages)
            elapsed = time.perf_counter() - started
            curve.append((elapsed, count))
            if count >= target:
                return curve
            if elapsed > limit_s:
                raise RuntimeError(f"stream {stream} has {count}/{target} after {limit_s}s")
            await asyncio.sleep(0.05)
    finally:
        await nc.close()


async def _raw_publish(nats_url: str, count: int, batch: int, users: int) -> float:
    """Seconds to publish_async ``count`` SignalRecorded messages and get every ack."""
    import nats

    from kernel.bus import StreamSpec, message_headers
    from tips.events.v1 import events_pb2

    payloads = []
    for user, items in _signals(count, batch, users):
        for item in items:
            name = f"users/{user}/signals/{secrets.token_hex(16)}"
            item.name = name
            event = events_pb2.SignalRecorded(event_id=name, user=f"users/{user}", signal=item)
            payloads.append((event.SerializeToString(), message_headers(event, name)))
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream(publish_async_max_pending=20_000)
        await js.add_stream(StreamSpec(RAW_STREAM, (RAW_SUBJECT,), duplicate_window=600).config())
        started = time.perf_counter()
        futures = [
            await js.publish_async(RAW_SUBJECT, data, headers=headers) for data, headers in payloads
        ]
        await asyncio.gather(*futures)
        seconds = time.perf_counter() - started
        assert int((await js.stream_info(RAW_STREAM)).state.messages) == count
        return seconds
    finally:
        await nc.close()


def _cpu_roots(service: int, client: int, pg: Any, work: Path) -> dict[str, int]:
    """The processes whose CPU the bench reports: service, client, PostgreSQL, NATS."""
    import psutil

    roots = {"service": service, "client": client}
    pid_file = pg.pgdata / "postmaster.pid"
    if pid_file.exists():
        roots["postgres"] = int(pid_file.read_text().split()[0])
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if str(work / "nats") in " ".join(proc.info["cmdline"] or []):
            roots["nats"] = proc.info["pid"]
    return roots


def _plot(result: dict[str, Any], curve: list[tuple[float, int]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    OUT.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = [
        "events service\n(gRPC, PG + outbox,\nrelay, JetStream)",
        "raw JetStream\npublish_async",
    ]
    rates = [result["ingest_signals_per_s"], result["raw_publish_async_msgs_per_s"]]
    left.bar(names, rates, color=["tab:blue", "tab:gray"])
    left.set_ylabel("signals / s")
    left.set_title(f"ingest vs raw: ratio {result['ratio']:.2f} (goal >= 0.5)")
    for i, rate in enumerate(rates):
        left.text(i, rate, f"{rate:,.0f}", ha="center", va="bottom")
    right.plot([t for t, _ in curve], [c for _, c in curve], color="tab:blue")
    right.set_xlabel("seconds since the first call")
    right.set_ylabel("signals on TIPS_EVENTS")
    right.set_title(f"{result['signals']:,} signals, batches of {result['batch']}")
    fig.tight_layout()
    path = OUT / "ingest.png"
    fig.savefig(path, dpi=110)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--client", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--key", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--relay",
        choices=("process", "inline"),
        default="process",
        help="the relay in a child process, as deployed (default), or in the service's loop",
    )
    parser.add_argument(
        "--profile", metavar="FILE", help="record the service with py-spy (raw folded stacks)"
    )
    args = parser.parse_args()
    if args.client:
        asyncio.run(
            _client(args.client, args.signals, args.batch, args.clients, args.users, args.key)
        )
        return

    from kernel.migrations import migrate
    from kernel.settings import Settings
    from services.events.service import SERVICE
    from tipsmesh.devtokens import TokenIssuer
    from tipsmesh.localinfra import LocalNats, LocalPostgres

    work = Path(tempfile.mkdtemp(prefix="tips-bench-ingest-"))
    # Users prove who they are with tokens from a local signer, as the auth service's.
    issuer = TokenIssuer()
    key = work / "signer.jwk"
    issuer.save(key)
    pg, nats_server = LocalPostgres(work / "pg"), LocalNats(work / "nats")
    service: subprocess.Popen[bytes] | None = None
    try:
        db_url, nats_url = pg.start(), nats_server.start()
        log(f"postgres {db_url}, nats {nats_url}")
        role_password = secrets.token_urlsafe(18)  # no login without a password
        migrate_settings = Settings(
            database_url=db_url, nats_url=nats_url, db_role_password=role_password
        )
        asyncio.run(migrate(migrate_settings, [SERVICE]))
        env = {
            "TIPS_DATABASE_URL": db_url,
            "TIPS_NATS_URL": nats_url,
            "TIPS_LOG_LEVEL": "WARNING",
            "TIPS_EVENTS_OUTBOX_MAX_BACKLOG": str(max(20_000, args.signals)),
            "TIPS_EVENTS_RELAY_PROCESS": "true" if args.relay == "process" else "false",
            # Throughput, not consent: no profile service runs in this bench.
            "TIPS_EVENTS_CONSENT_GATE": "false",
            # Plaintext: what mTLS and the token check add per hop is bench/hop_security.py's.
            "TIPS_INSECURE": "1",
            "TIPS_DB_ROLE_PASSWORD": role_password,
            "TIPS_JWKS_URL": issuer.jwks_url,
        }
        wrapper: list[str] = []
        if args.profile:  # py-spy (pip install py-spy) samples the service for the whole run
            spy = str(Path(sys.executable).parent / "py-spy")
            wrapper = [spy, "record", "--format", "raw", "--subprocesses"]
            wrapper += ["-o", args.profile, "--rate", "200", "--"]
        service, address = start_service("events", env, wrapper=wrapper)
        log("events service SERVING; warming up")
        warm = subprocess.run(
            [sys.executable, __file__, "--client", address, "--signals", str(args.batch * 2),
             "--batch", str(args.batch), "--clients", "1", "--users", "1", "--key", str(key)],
            input="GO\n", capture_output=True, text=True, cwd=ROOT, check=True,
        )  # fmt: skip
        assert "READY" in warm.stdout
        base = asyncio.run(_stream_count(nats_url, "TIPS_EVENTS"))
        asyncio.run(_wait_stream(nats_url, "TIPS_EVENTS", args.batch * 2, time.perf_counter(), 30))
        base = args.batch * 2
        total = args.signals // args.batch * args.batch
        log(f"ingesting {total} signals ({args.clients} clients, batches of {args.batch})")
        client = subprocess.Popen(
            [sys.executable, __file__, "--client", address, "--signals", str(total),
             "--batch", str(args.batch), "--clients", str(args.clients),
             "--users", str(args.users), "--key", str(key)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        assert client.stdin is not None and client.stdout is not None
        if client.stdout.readline().strip() != "READY":
            raise RuntimeError("bench client did not start")
        meter = CpuMeter(_cpu_roots(service.pid, client.pid, pg, work))
        meter.start()
        started = time.perf_counter()
        client.stdin.write("GO\n")
        client.stdin.flush()
        curve = asyncio.run(_wait_stream(nats_url, "TIPS_EVENTS", base + total, started, 600))
        seconds = curve[-1][0]
        cpu = meter.stop()
        client_out = json.loads(client.stdout.readline())
        client.wait(30)
        curve = [(t, c - base) for t, c in curve]
        log(f"service: {total / seconds:,.0f} signals/s; raw publish_async next")
        raw_meter = CpuMeter({"publisher": os.getpid(), "nats": meter.roots.get("nats", 0)})
        raw_meter.start()  # includes building the payloads, before the timed part
        raw_seconds = asyncio.run(_raw_publish(nats_url, total, args.batch, args.users))
        raw_cpu = raw_meter.stop()
        result = {
            "bench": "ingest",
            "cpus": os.cpu_count(),
            "signals": total,
            "batch": args.batch,
            "clients": args.clients,
            "users": args.users,
            "relay": args.relay,
            "ingest_seconds": round(seconds, 3),
            "ingest_signals_per_s": round(total / seconds, 1),
            "raw_seconds": round(raw_seconds, 3),
            "raw_publish_async_msgs_per_s": round(total / raw_seconds, 1),
            "ratio": round((total / seconds) / (total / raw_seconds), 3),
            "client_retries": client_out["retries"],
            # CPU seconds per process tree while ingesting: where the 2 cores went.
            "cpu_seconds": cpu,
            "raw_cpu_seconds": raw_cpu,
        }
        result["plot"] = str(_plot(result, curve).relative_to(ROOT))
        print(json.dumps(result, indent=2))
    finally:
        if service is not None and service.poll() is None:
            service.send_signal(signal.SIGINT if args.profile else signal.SIGTERM)
            service.wait(60)
        nats_server.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
