"""betterproto2 against the mesh's protobuf (upb) messages, measured in one run.

    tips bench betterproto [--rounds 3] [--batch-seconds 0.2] [--call-seconds 2] [--fresh]

The mesh's Python code is protoc's ``*_pb2`` (protobuf's upb C runtime) with
mypy-protobuf ``.pyi`` types and grpcio stubs. betterproto2 generates
dataclasses with its own pure-Python wire codec and grpclib async stubs. The
baseline (upb, the project venv) is measured in the same run:

1. A throwaway venv (``.run/bench-betterproto/venv``, reused while the
   versions match; ``--fresh`` rebuilds it) gets betterproto2[grpclib] and
   betterproto2-compiler from the package index, and the ``tips-client``
   package (clients/python[typing]) so both are type-checked as installed
   packages. Never the project's dependencies.
2. grpc_tools.protoc with betterproto2's plugin generates package ``bp2`` for
   proto/ and the third_party protos they import.
3. The hot messages are built with our stubs and written as bytes: a Tip, a
   ListTipsResponse with a page of 10 tips, a BatchIngestSignalsRequest with
   100 signals. Worker processes (one per library, alternating for
   ``--rounds``) time serialise, parse, to-JSON and from-JSON of each (best
   batch of each round, median of rounds); betterproto2's bytes and JSON are
   checked against ours.
4. Import time of the messages, and of the messages with the async client
   stack, in fresh interpreters (median of 7 each).
5. Typing: ``mypy --strict`` on the same caller code written for each
   (errors, expressions typed Any, what ``reveal_type`` says) and on the same
   ten planted mistakes (how many each catches).
6. The async client: one grpc.aio server with the mesh's mutual TLS
   (``kernel.tls``, development certificates) serving ListTips; a grpcio aio
   client (``tipsclient.connect``) and a grpclib client with betterproto2
   stubs (an ``ssl.SSLContext`` with the client certificate and the server
   name check) call it, one call at a time and 16 at a time.

Prints JSON and writes bench/out/betterproto.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
WORK = ROOT / ".run" / "bench-betterproto"
BETTERPROTO2 = "0.10.0"
COMPILER = "0.10.1"
MESSAGES = ("tip", "list_tips_response", "batch_ingest_request")
OPS = ("serialize", "parse", "to_json", "from_json")
PAGE = 10  # tips in a ListTipsResponse
SIGNALS = 100  # signals in a BatchIngestSignalsRequest


def log(message: str) -> None:
    print(f"[betterproto] {message}", file=sys.stderr, flush=True)


# --- the throwaway venv and the generated code --------------------------------------------


def venv_python(work: Path, fresh: bool) -> Path:
    venv = work / "venv"
    python = venv / "bin" / "python"
    stamp = venv / "bench-versions.txt"
    wanted = f"betterproto2=={BETTERPROTO2} betterproto2-compiler=={COMPILER}\n"
    if fresh or not stamp.is_file() or stamp.read_text() != wanted:
        shutil.rmtree(venv, ignore_errors=True)
        log(f"creating {venv}: betterproto2 {BETTERPROTO2}, compiler {COMPILER}, tips-client")
        began = time.monotonic()
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "--python", python, "install", "--quiet",
             f"betterproto2[grpclib]=={BETTERPROTO2}", f"betterproto2-compiler=={COMPILER}",
             f"{ROOT / 'clients' / 'python'}[typing]"],
            check=True,
        )  # fmt: skip
        stamp.write_text(wanted)
        log(f"venv ready in {time.monotonic() - began:.1f} s")
    return python


def generate(python: Path, out: Path) -> float:
    """Generate package ``bp2`` for every proto of proto/; seconds taken."""
    import grpc_tools  # type: ignore[import-untyped]

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
    plugin = python.parent / "protoc-gen-python_betterproto2"
    # The plugin formats its output with ruff, which it finds on PATH (the venv has it).
    env = {**os.environ, "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    began = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}",
         f"-I{ROOT / 'third_party'}", f"-I{well_known}",
         f"--plugin=protoc-gen-python_betterproto2={plugin}",
         f"--python_betterproto2_out=client_generation=async:{out}", *protos],
        check=True, env=env, capture_output=True, text=True,
    )  # fmt: skip
    return time.monotonic() - began


# --- the hot messages, built with our stubs -------------------------------------------------


def build_payloads(directory: Path) -> dict[str, bytes]:
    from datetime import UTC, datetime, timedelta

    from google.protobuf import timestamp_pb2

    from tips.events.v1 import events_service_pb2 as ev
    from tips.events.v1 import signal_pb2
    from tips.recommender.v1 import catalog_tip_pb2, tip_pb2
    from tips.recommender.v1 import recommender_service_pb2 as rec

    now = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)

    def ts(moment: datetime) -> timestamp_pb2.Timestamp:
        stamp = timestamp_pb2.Timestamp()
        stamp.FromDatetime(moment)
        return stamp

    def tip(i: int) -> tip_pb2.Tip:
        return tip_pb2.Tip(
            name=f"users/u_8f3a2c91d4/tips/t_{i:04d}a9c3e1",
            catalog_tip=f"catalogTips/walk-after-lunch-{i}",
            title="Take a 10-minute walk after lunch",
            body="A short walk after eating steadies your energy for the afternoon and adds "
            "about a thousand steps. Leave your phone on the desk if you can.",
            category="movement",
            explanation="You walked 2,300 steps fewer than usual yesterday and your calendar "
            "is free from 13:00 to 13:30.",
            effort=catalog_tip_pb2.TIP_EFFORT_LOW,
            minutes_needed=10,
            state=tip_pb2.TIP_STATE_ACTIVE,
            decide_time=ts(now),
            expire_time=ts(now + timedelta(hours=4)),
            model_version="models/linucb/versions/17",
        )

    def signal(i: int) -> signal_pb2.Signal:
        start = now - timedelta(hours=i)
        common: dict[str, Any] = {
            "client_signal_id": f"phone-7f1e-{i:05d}",
            "source": signal_pb2.SIGNAL_SOURCE_PHONE,
            "start_time": ts(start),
            "end_time": ts(start + timedelta(minutes=55)),
        }
        if i % 2:
            return signal_pb2.Signal(
                kind=signal_pb2.SIGNAL_KIND_SLEEP,
                sleep=signal_pb2.SleepPayload(asleep_minutes=412, score=81),
                **common,
            )
        return signal_pb2.Signal(
            kind=signal_pb2.SIGNAL_KIND_STEPS,
            steps=signal_pb2.StepsPayload(count=1200 + i, active_minutes=14),
            **common,
        )

    messages = {
        "tip": tip(0),
        "list_tips_response": rec.ListTipsResponse(tips=[tip(i) for i in range(PAGE)]),
        "batch_ingest_request": ev.BatchIngestSignalsRequest(
            parent="users/u_8f3a2c91d4", signals=[signal(i) for i in range(SIGNALS)]
        ),
    }
    directory.mkdir(parents=True, exist_ok=True)
    data = {name: m.SerializeToString() for name, m in messages.items()}
    for name, payload in data.items():
        (directory / f"{name}.bin").write_bytes(payload)
    return data


# --- the timing workers ------------------------------------------------------------------


def _best_us(fn: Any, batch_seconds: float, batches: int = 5) -> float:
    """Best per-call µs over ``batches`` batches of about ``batch_seconds`` each."""
    n, took = 1, 0.0
    while True:  # calibrate
        began = time.perf_counter()
        for _ in range(n):
            fn()
        took = time.perf_counter() - began
        if took >= batch_seconds / 4:
            break
        n *= 4
    n = max(1, int(n * batch_seconds / took))
    best = float("inf")
    for _ in range(batches):
        began = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - began) / n)
    return best * 1e6


def _codecs(library: str) -> dict[str, tuple[Any, Any, Any, Any]]:
    """Per message: (serialize, parse, to_json, from_json) on bytes or a parsed message."""
    if library == "upb":
        from google.protobuf import json_format

        from tips.events.v1 import events_service_pb2 as ev
        from tips.recommender.v1 import recommender_service_pb2 as rec
        from tips.recommender.v1 import tip_pb2

        classes: dict[str, Any] = {
            "tip": tip_pb2.Tip,
            "list_tips_response": rec.ListTipsResponse,
            "batch_ingest_request": ev.BatchIngestSignalsRequest,
        }
        return {
            name: (
                lambda m: m.SerializeToString(),
                cls.FromString,
                json_format.MessageToJson,
                lambda text, cls=cls: json_format.Parse(text, cls()),
            )
            for name, cls in classes.items()
        }
    import bp2.tips.events.v1 as bp_events  # type: ignore[import-not-found]
    import bp2.tips.recommender.v1 as bp_rec  # type: ignore[import-not-found]

    classes = {
        "tip": bp_rec.Tip,
        "list_tips_response": bp_rec.ListTipsResponse,
        "batch_ingest_request": bp_events.BatchIngestSignalsRequest,
    }
    return {
        name: (bytes, cls.parse, lambda m: m.to_json(), cls.from_json)
        for name, cls in classes.items()
    }


def _time_message(codec: tuple[Any, Any, Any, Any], data: bytes, batch: float) -> dict[str, Any]:
    serialize, parse, to_json, from_json = codec
    message = parse(data)
    text = to_json(message)
    return {
        "us": {
            "serialize": _best_us(lambda: serialize(message), batch),
            "parse": _best_us(lambda: parse(data), batch),
            "to_json": _best_us(lambda: to_json(message), batch),
            "from_json": _best_us(lambda: from_json(text), batch),
        },
        "bytes": serialize(message),
        "json": text,
    }


def worker(library: str, work: Path, batch_seconds: float) -> dict[str, Any]:
    """Time every op of every message with ``library``; write its bytes and JSON."""
    results: dict[str, dict[str, float]] = {}
    payloads = work / "payloads"
    for name, codec in _codecs(library).items():
        timed = _time_message(codec, (payloads / f"{name}.bin").read_bytes(), batch_seconds)
        (payloads / f"{name}.{library}.out.bin").write_bytes(timed["bytes"])
        (payloads / f"{name}.{library}.json").write_text(timed["json"])
        results[name] = timed["us"]
    return results


def _check_outputs(work: Path) -> dict[str, dict[str, bool]]:
    """betterproto2's bytes and JSON against ours, per message."""
    from google.protobuf import json_format

    from tips.events.v1 import events_service_pb2 as ev
    from tips.recommender.v1 import recommender_service_pb2 as rec
    from tips.recommender.v1 import tip_pb2

    classes: dict[str, Any] = {
        "tip": tip_pb2.Tip,
        "list_tips_response": rec.ListTipsResponse,
        "batch_ingest_request": ev.BatchIngestSignalsRequest,
    }
    out = {}
    payloads = work / "payloads"
    for name, cls in classes.items():
        original = (payloads / f"{name}.bin").read_bytes()
        theirs = (payloads / f"{name}.bp2.out.bin").read_bytes()
        their_json = (payloads / f"{name}.bp2.json").read_text()
        out[name] = {
            "bytes_identical": theirs == original,
            "parses_back_equal": cls.FromString(theirs) == cls.FromString(original),
            "json_equal": json.loads(their_json)
            == json.loads((payloads / f"{name}.upb.json").read_text()),
            "json_parses_back_equal": json_format.Parse(their_json, cls())
            == cls.FromString(original),
        }
    return out


# --- import time -------------------------------------------------------------------------

IMPORTS = {
    ("upb", "messages"): "import tips.recommender.v1.recommender_service_pb2, "
    "tips.events.v1.events_service_pb2",
    ("upb", "with_client"): "import grpc.aio, tips.recommender.v1.recommender_service_pb2_grpc, "
    "tips.events.v1.events_service_pb2_grpc",
    ("bp2", "messages"): "import bp2.tips.recommender.v1, bp2.tips.events.v1",
    ("bp2", "with_client"): "import grpclib.client, bp2.tips.recommender.v1, bp2.tips.events.v1",
}


def import_times(pythons: dict[str, Path], env: dict[str, dict[str, str]]) -> dict[str, Any]:
    timed = "import time; t = time.perf_counter(); {}; print(time.perf_counter() - t)"
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in IMPORTS}
    for _ in range(7):  # alternate, the machine is shared
        for (library, what), statement in IMPORTS.items():
            ran = subprocess.run(
                [pythons[library], "-c", timed.format(statement)],
                env=env[library], capture_output=True, text=True, check=True,
            )  # fmt: skip
            samples[(library, what)].append(float(ran.stdout) * 1000)
    out: dict[str, Any] = {}
    for what in ("messages", "with_client"):
        upb = statistics.median(samples[("upb", what)])
        bp2 = statistics.median(samples[("bp2", what)])
        out[what] = {"upb_ms": round(upb, 1), "bp2_ms": round(bp2, 1), "ratio": round(bp2 / upb, 2)}
    return out


# --- typing ------------------------------------------------------------------------------

UPB_SNIPPET = """\
from __future__ import annotations

from tips.events.v1 import signal_pb2
from tips.recommender.v1 import recommender_service_pb2 as rec
from tips.recommender.v1 import recommender_service_pb2_grpc as rec_grpc
from tips.recommender.v1 import tip_pb2
import grpc


def build() -> rec.ListTipsResponse:
    tip = tip_pb2.Tip(name="users/u1/tips/t1", title="Walk", minutes_needed=10,
                      state=tip_pb2.TIP_STATE_ACTIVE)
    return rec.ListTipsResponse(tips=[tip])


async def call(channel: grpc.aio.Channel) -> list[str]:
    stub = rec_grpc.RecommenderServiceStub(channel)
    reply = await stub.ListTips(rec.ListTipsRequest(parent="users/u1", page_size=3))
    reveal_type(stub.ListTips)
    reveal_type(reply)
    reveal_type(reply.tips[0])
    reveal_type(reply.tips[0].decide_time)
    reveal_type(reply.tips[0].state)
    return [t.title for t in reply.tips]


def payload(signal: signal_pb2.Signal) -> int:
    reveal_type(signal.WhichOneof("payload"))
    return signal.steps.count if signal.HasField("steps") else 0


def parsed(data: bytes) -> int:
    message = rec.ListTipsResponse.FromString(data)
    reveal_type(message)
    return len(message.tips)
"""
BP2_SNIPPET = """\
from __future__ import annotations

import betterproto2
import grpclib.client
from bp2.tips.events.v1 import Signal
from bp2.tips.recommender.v1 import (
    ListTipsRequest, ListTipsResponse, RecommenderServiceStub, Tip, TipState,
)


def build() -> ListTipsResponse:
    tip = Tip(name="users/u1/tips/t1", title="Walk", minutes_needed=10,
              state=TipState.ACTIVE)
    return ListTipsResponse(tips=[tip])


async def call(channel: grpclib.client.Channel) -> list[str]:
    stub = RecommenderServiceStub(channel)
    reply = await stub.list_tips(ListTipsRequest(parent="users/u1", page_size=3))
    reveal_type(stub.list_tips)
    reveal_type(reply)
    reveal_type(reply.tips[0])
    reveal_type(reply.tips[0].decide_time)
    reveal_type(reply.tips[0].state)
    return [t.title for t in reply.tips]


def payload(signal: Signal) -> int:
    reveal_type(betterproto2.which_one_of(signal, "payload"))
    return signal.steps.count if signal.steps is not None else 0


def parsed(data: bytes) -> int:
    message = ListTipsResponse.parse(data)
    reveal_type(message)
    return len(message.tips)
"""
# The same ten mistakes for each: (what, upb line, bp2 line), inside `async def f(...)`.
MISTAKES = [
    ("wrong field type", 'tip_pb2.Tip(minutes_needed="10")', 'Tip(minutes_needed="10")'),
    ("unknown field", 'tip_pb2.Tip(titel="Walk")', 'Tip(titel="Walk")'),
    ("assign wrong type", "tip.title = 3", "tip.title = 3"),
    ("read as wrong type", "n: int = tip.title", "n: int = tip.title"),
    ("unknown attribute", "tip.titel", "tip.titel"),
    ("enum of another type", "tip.state = catalog_tip_pb2.TIP_EFFORT_LOW",
     "tip.state = TipEffort.LOW"),
    ("wrong message in a list", "rec.ListTipsResponse(tips=[rec.ListTipsRequest()])",
     "ListTipsResponse(tips=[ListTipsRequest()])"),
    ("wrong request to a stub", "await stub.ListTips(rec.GetTipRequest())",
     "await stub.list_tips(GetTipRequest())"),
    ("wrong result type", "r: rec.GetTipResponse = await stub.ListTips(req)",
     "r: GetTipResponse = await stub.list_tips(req)"),
    ("unknown oneof", 'signal.WhichOneof("paylod")',
     'betterproto2.which_one_of(signal, "paylod")'),
]  # fmt: skip
MISTAKES_HEADER = {
    "upb": (
        "from tips.events.v1 import signal_pb2\n"
        "from tips.recommender.v1 import catalog_tip_pb2, tip_pb2\n"
        "from tips.recommender.v1 import recommender_service_pb2 as rec\n"
        "from tips.recommender.v1 import recommender_service_pb2_grpc as rec_grpc\n\n\n"
        "async def f(tip: tip_pb2.Tip, stub: rec_grpc.RecommenderServiceAsyncStub,\n"
        "            req: rec.ListTipsRequest, signal: signal_pb2.Signal) -> None:\n"
    ),
    "bp2": (
        "import betterproto2\n"
        "from bp2.tips.events.v1 import Signal\n"
        "from bp2.tips.recommender.v1 import (GetTipRequest, GetTipResponse, ListTipsRequest,\n"
        "    ListTipsResponse, RecommenderServiceStub, Tip, TipEffort)\n\n\n"
        "async def f(tip: Tip, stub: RecommenderServiceStub, req: ListTipsRequest,\n"
        "            signal: Signal) -> None:\n"
    ),
}


def _mypy(python: Path, directory: Path, name: str, source: str) -> tuple[list[str], int]:
    """mypy --strict on one file against the packages installed for ``python``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(source)
    (directory / "mypy.ini").write_text("[mypy]\nstrict = True\n")
    report = directory / f"{name}.anys"
    ran = subprocess.run(
        [sys.executable, "-m", "mypy", "--python-executable", python, "--config-file",
         "mypy.ini", "--no-error-summary", "--any-exprs-report", report, name],
        cwd=directory, capture_output=True, text=True,
        env={k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")},
    )  # fmt: skip
    lines = [line for line in ran.stdout.splitlines() if line.startswith(name)]
    anys = 0
    for row in (report / "any-exprs.txt").read_text().splitlines():
        parts = row.split()
        if parts and parts[0] == Path(name).stem:
            anys = int(parts[1])
    return lines, anys


def typing_quality(python: Path, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for library, snippet in (("upb", UPB_SNIPPET), ("bp2", BP2_SNIPPET)):
        lines, anys = _mypy(python, work / "typing" / library, "snippet.py", snippet)
        revealed = [line.split("Revealed type is ")[1].strip('"') for line in lines
                    if "Revealed type is" in line]  # fmt: skip
        errors = [line for line in lines if ": error:" in line]
        column = 1 if library == "upb" else 2
        body = "".join(f"    {m[column]}\n" for m in MISTAKES)
        mistake_lines, _ = _mypy(
            python, work / "typing" / library, "mistakes.py", MISTAKES_HEADER[library] + body
        )
        first = MISTAKES_HEADER[library].count("\n") + 1
        flagged = {int(line.split(":")[1]) for line in mistake_lines if ": error:" in line}
        caught = [m[0] for i, m in enumerate(MISTAKES) if first + i in flagged]
        out[library] = {
            "snippet_errors": errors,
            "snippet_any_expressions": anys,
            "revealed": revealed,
            # Coroutine[Any, Any, T] is how mypy shows any `async def`: not a hole.
            "revealed_with_any": sum(
                "Any" in r.replace("Coroutine[Any, Any, ", "Coroutine[") for r in revealed
            ),
            "mistakes_caught": len(caught),
            "mistakes_missed": [m[0] for m in MISTAKES if m[0] not in caught],
        }
    out["mistakes_planted"] = len(MISTAKES)
    return out


# --- the async client ----------------------------------------------------------------------


async def _serve(tls_dir: Path, page_bytes: bytes) -> None:
    """A grpc.aio server with the mesh's mutual TLS, answering ListTips with the page."""
    import asyncio

    import grpc

    from kernel.tls import peer_name, server_credentials
    from tips.recommender.v1 import recommender_service_pb2 as rec
    from tips.recommender.v1 import recommender_service_pb2_grpc as rec_grpc
    from tipsmesh.devcerts import identity

    page = rec.ListTipsResponse.FromString(page_bytes)

    class Recommender(rec_grpc.RecommenderServiceServicer):  # type: ignore[misc]
        async def ListTips(self, request: Any, context: Any) -> Any:
            metadata = dict(context.invocation_metadata())
            if peer_name(context) != "gateway" or not metadata.get("authorization"):
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "gateway and token")
            return page

    server = grpc.aio.server()
    rec_grpc.add_RecommenderServiceServicer_to_server(Recommender(), server)  # type: ignore[abstract]
    port = server.add_secure_port(
        "127.0.0.1:0", server_credentials(identity(tls_dir, "recommender").settings())
    )
    await server.start()
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await server.stop(0)


async def _client(library: str, port: int, tls_dir: Path, seconds: float) -> dict[str, Any]:
    """Calls per second and client CPU per call, one at a time and 16 at a time."""
    import asyncio

    token = "eyJhbGciOiJFUzI1NiJ9." + "x" * 300  # the server only checks one is sent
    ca, cert, key = tls_dir / "ca.pem", tls_dir / "gateway.pem", tls_dir / "gateway.key"
    if library == "upb":
        import tipsclient
        from tips.recommender.v1 import recommender_service_pb2 as rec
        from tips.recommender.v1 import recommender_service_pb2_grpc as rec_grpc

        channel: Any = await tipsclient.connect(
            "recommender", address=f"127.0.0.1:{port}", ca=ca, cert=cert, key=key, token=token
        )
        stub = rec_grpc.RecommenderServiceStub(channel)
        request = rec.ListTipsRequest(parent="users/u1", page_size=PAGE)

        async def call() -> int:
            return len((await stub.ListTips(request, timeout=10)).tips)
    else:
        import ssl

        import bp2.tips.recommender.v1 as bp_rec
        from grpclib.client import Channel  # type: ignore[import-not-found]
        from grpclib.config import Configuration  # type: ignore[import-not-found]

        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(str(cert), str(key))
        context.set_alpn_protocols(["h2"])
        channel = Channel(
            "127.0.0.1", port, ssl=context,
            config=Configuration(ssl_target_name_override="recommender"),
        )  # fmt: skip
        stub = bp_rec.RecommenderServiceStub(channel, metadata={"authorization": f"Bearer {token}"})
        request = bp_rec.ListTipsRequest(parent="users/u1", page_size=PAGE)

        async def call() -> int:
            return len((await stub.list_tips(request, timeout=10)).tips)

    assert await call() == PAGE  # connected, TLS checked both ways, token sent

    async def calls_until(stop: float) -> int:
        count = 0
        while time.perf_counter() < stop:
            await call()
            count += 1
        return count

    out: dict[str, Any] = {}
    for concurrency in (1, 16):
        stop = time.perf_counter() + seconds
        began, cpu = time.perf_counter(), time.process_time()
        count = sum(await asyncio.gather(*(calls_until(stop) for _ in range(concurrency))))
        elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
        out[f"c{concurrency}"] = {
            "calls_per_s": round(count / elapsed),
            "client_cpu_us_per_call": round(cpu / count * 1e6, 1),
        }
    close = channel.close()
    if close is not None:  # grpc.aio: a coroutine; grpclib: done already
        await close
    return out


def clients(
    pythons: dict[str, Path], env: dict[str, dict[str, str]], work: Path, args: Any
) -> dict[str, Any]:
    from tipsmesh.devcerts import ensure_mesh_certs

    tls_dir = work / "tls"
    ensure_mesh_certs(tls_dir, ["recommender", "gateway"])
    me = str(Path(__file__).resolve())
    payload = work / "payloads" / "list_tips_response.bin"
    server = subprocess.Popen(
        [sys.executable, me, "--serve", str(tls_dir), str(payload)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env["upb"],
    )  # fmt: skip
    rounds: dict[str, list[dict[str, Any]]] = {"upb": [], "bp2": []}
    try:
        assert server.stdout is not None and server.stdin is not None
        port = int(server.stdout.readline())
        for r in range(args.rounds):
            for library in ("upb", "bp2"):
                log(f"async client round {r + 1}/{args.rounds}: {library}")
                ran = subprocess.run(
                    [pythons[library], me, "--client", library, str(port), str(tls_dir),
                     str(args.call_seconds)],
                    env=env[library], capture_output=True, text=True, check=True,
                )  # fmt: skip
                rounds[library].append(json.loads(ran.stdout))
        server.stdin.write("\n")
        server.stdin.flush()
        server.wait(30)
    finally:
        if server.poll() is None:
            server.kill()
    out: dict[str, Any] = {}
    for library, results in rounds.items():
        out[library] = {
            mode: {
                key: statistics.median(r[mode][key] for r in results)
                for key in ("calls_per_s", "client_cpu_us_per_call")
            }
            for mode in ("c1", "c16")
        }
    for mode in ("c1", "c16"):
        out[f"{mode}_ratio_bp2_to_upb"] = {
            key: round(out["bp2"][mode][key] / out["upb"][mode][key], 2)
            for key in ("calls_per_s", "client_cpu_us_per_call")
        }
    out["stack"] = {
        "upb": "grpcio aio (C core): tipsclient.connect, mTLS and server name by channel "
        "credentials, the token as call credentials; the mesh's interceptors and "
        "grpc_health work on this channel",
        "bp2": "grpclib (pure Python h2): an ssl.SSLContext with the client certificate, "
        "server name by Configuration(ssl_target_name_override), the token as stub "
        "metadata; no grpcio interceptors (grpclib has its own events API), grpclib's "
        "health service uses protobuf's messages",
    }
    return out


# --- the driver ---------------------------------------------------------------------------


def _summary(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in MESSAGES:
        out[name] = {}
        for op in OPS:
            upb = statistics.median(r[name][op] for r in rounds["upb"])
            bp2 = statistics.median(r[name][op] for r in rounds["bp2"])
            out[name][op] = {
                "upb_us": round(upb, 2),
                "bp2_us": round(bp2, 2),
                "ratio_bp2_to_upb": round(bp2 / upb, 1),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-seconds", type=float, default=0.2)
    parser.add_argument("--call-seconds", type=float, default=2.0)
    parser.add_argument("--fresh", action="store_true", help="rebuild the throwaway venv")
    parser.add_argument("--work", type=Path, default=WORK, help=argparse.SUPPRESS)
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        library, directory, batch = args.worker
        print(json.dumps(worker(library, Path(directory), float(batch))))
        return
    if args.serve:
        import asyncio

        asyncio.run(_serve(Path(args.serve[0]), Path(args.serve[1]).read_bytes()))
        return
    if args.client:
        import asyncio

        library, port, tls_dir, seconds = args.client
        print(json.dumps(asyncio.run(_client(library, int(port), Path(tls_dir), float(seconds)))))
        return

    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    python = venv_python(work, args.fresh)
    log("generating betterproto2 code for proto/")
    gen_s = generate(python, work / "bp2")
    generated = sorted((work / "bp2").rglob("*.py"))
    lines = sum(len(p.read_text().splitlines()) for p in generated)
    build_payloads(work / "payloads")
    pythons = {"upb": Path(sys.executable), "bp2": python}
    plain = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
    env = {
        "upb": {**plain, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen' / 'python'}"},
        "bp2": {**plain, "PYTHONPATH": str(work)},
    }
    me = str(Path(__file__).resolve())
    rounds: dict[str, list[dict[str, Any]]] = {"upb": [], "bp2": []}
    for r in range(args.rounds):
        for library in ("upb", "bp2"):
            log(f"messages round {r + 1}/{args.rounds}: {library}")
            ran = subprocess.run(
                [pythons[library], me, "--worker", library, str(work), str(args.batch_seconds)],
                env=env[library], capture_output=True, text=True, check=True,
            )  # fmt: skip
            rounds[library].append(json.loads(ran.stdout))
    log("import times")
    imports = import_times(pythons, env)
    log("typing: mypy --strict")
    # Both as installed packages: tips-client is in the venv, and so is a copy of bp2.
    (site,) = python.parents[1].glob("lib/python3*/site-packages")
    shutil.rmtree(site / "bp2", ignore_errors=True)
    shutil.copytree(work / "bp2", site / "bp2")
    with tempfile.TemporaryDirectory(prefix="tips-bench-bp2-typing-") as tmp:
        typing = typing_quality(python, Path(tmp))
    log("async clients")
    async_clients = clients(pythons, env, work, args)
    report = {
        "scenario": "betterproto",
        "versions": {
            "betterproto2": BETTERPROTO2,
            "betterproto2_compiler": COMPILER,
            "protobuf": _version("protobuf"),
            "grpcio": _version("grpcio"),
        },
        "baseline": "upb: protoc's *_pb2 on protobuf's upb runtime with mypy-protobuf types "
        "(the mesh's stubs), measured in the same run",
        "rounds": args.rounds,
        "generation": {"seconds": round(gen_s, 2), "files": len(generated), "lines": lines},
        "messages": {
            "sizes_bytes": {
                n: len((work / "payloads" / f"{n}.bin").read_bytes()) for n in MESSAGES
            },
            "per_op_us": _summary(rounds),
            "betterproto2_output_checked": _check_outputs(work),
        },
        "import_ms": imports,
        "typing": typing,
        "async_client": async_clients,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "betterproto.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    main()
