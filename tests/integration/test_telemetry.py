"""Telemetry end to end: one trace per REST call across processes and the bus, metrics over
OTLP and Prometheus, and the recommender's scorer fallback in its status.

The gateway, the events service and the recommender run as their own
processes (`tips serve gateway`; the services as `tips serve` runs them, with
this test's durable consumers) on the session's PostgreSQL and NATS,
exporting over OTLP to a real OTLP/gRPC receiver in this test (the
collector's TraceService and MetricsService, from opentelemetry-proto). The
recommender's Triton URL names a port nobody listens on, so every decision's
scoring falls back to ONNX Runtime in process, as when Triton is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from prometheus_client.parser import text_string_to_metric_families

from kernel.bus import subject_of
from kernel.migrations import migrate
from kernel.settings import Settings
from services.events.service import SERVICE as EVENTS
from services.recommender.service import SERVICE as RECOMMENDER
from tests.support import tokens
from tests.support.streams import left_as_found
from tests.support.waiting import eventually, stream_messages
from tips.events.v1 import events_pb2 as signal_events
from tips.recommender.v1 import events_pb2 as rec_events
from tips.recommender.v1 import recommender_service_pb2 as rec
from tips.recommender.v1 import recommender_service_pb2_grpc as rec_grpc
from tipsmesh.localinfra import free_ports

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
STREAMS = ("TIPS_EVENTS", "TIPS_RECOMMENDER", "TIPS_PROFILE")
START_TIMEOUT = 90.0
SERVER, CLIENT, CONSUMER = (
    trace_pb2.Span.SPAN_KIND_SERVER,
    trace_pb2.Span.SPAN_KIND_CLIENT,
    trace_pb2.Span.SPAN_KIND_CONSUMER,
)
DECIDE_ROUTE = "/v1/{parent=users/*}/tips:decide"
DECIDE = "tips.recommender.v1.RecommenderService/DecideTips"
INGEST = "tips.events.v1.EventsService/BatchIngestSignals"


# --- the OTLP receiver ----------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    error: bool


def _value(value: common_pb2.AnyValue) -> Any:
    return getattr(value, value.WhichOneof("value") or "string_value")


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


@dataclass
class Receiver:
    """What the processes exported, as a collector's OTLP/gRPC receiver got it."""

    traces: list[trace_service_pb2.ExportTraceServiceRequest] = field(default_factory=list)
    metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = field(default_factory=list)

    def spans(self, trace_id: str | None = None) -> list[Span]:
        out = []
        for request in list(self.traces):
            for resource_spans in request.resource_spans:
                service = _attributes(resource_spans.resource.attributes)["service.name"]
                for scope_spans in resource_spans.scope_spans:
                    for s in scope_spans.spans:
                        span = Span(
                            service, s.name, s.kind, s.trace_id.hex(), s.span_id.hex(),
                            s.parent_span_id.hex(), _attributes(s.attributes),
                            s.status.code == trace_pb2.Status.STATUS_CODE_ERROR,
                        )  # fmt: skip
                        if trace_id is None or span.trace_id == trace_id:
                            out.append(span)
        return out

    def points(self, service: str, name: str) -> list[tuple[dict[str, Any], Any]]:
        """The latest data point of each attribute set of metric ``name`` from ``service``
        (cumulative: each export carries the totals)."""
        latest: dict[tuple[tuple[str, str], ...], tuple[dict[str, Any], Any]] = {}
        for request in list(self.metrics):
            for resource_metrics in request.resource_metrics:
                attrs = _attributes(resource_metrics.resource.attributes)
                if attrs["service.name"] != service:
                    continue
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        if metric.name == name:
                            for point in _data_points(metric):
                                labels = _attributes(point.attributes)
                                key = tuple(sorted((k, str(v)) for k, v in labels.items()))
                                latest[key] = (labels, point)
        return list(latest.values())


def _data_points(metric: metrics_pb2.Metric) -> Any:
    kind = metric.WhichOneof("data")
    return getattr(metric, kind).data_points if kind else []


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    async def Export(self, request: Any, context: Any) -> Any:
        self.receiver.traces.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    async def Export(self, request: Any, context: Any) -> Any:
        self.receiver.metrics.append(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


@contextlib.asynccontextmanager
async def otlp_receiver() -> AsyncIterator[tuple[Receiver, int]]:
    receiver = Receiver()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(receiver), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(receiver), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield receiver, port
    finally:
        await server.stop(0)


# --- the processes ----------------------------------------------------------------------


@dataclass
class Stack:
    receiver: Receiver
    gateway: str
    recommender: str
    metrics_port: int
    nats_url: str
    logs: dict[str, Path]


@dataclass
class Process:
    name: str
    proc: asyncio.subprocess.Process
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


async def _spawn(name: str, argv: list[str], env: dict[str, str], logs: Path) -> Process:
    log = logs / f"{name}.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out
        )
    return Process(name, proc, log)


async def _wait_serving(process: Process, address: str) -> None:
    async def probe() -> int:
        if process.proc.returncode is not None:
            raise AssertionError(f"{process.name} exited:\n{process.output()}")
        async with grpc.aio.insecure_channel(address) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
        return int(reply.status)

    await eventually(probe, lambda s: s == health_pb2.HealthCheckResponse.SERVING, START_TIMEOUT)


async def _wait_http(process: Process, url: str) -> None:
    async def probe() -> int:
        if process.proc.returncode is not None:
            raise AssertionError(f"{process.name} exited:\n{process.output()}")
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                return (await client.get(url)).status_code
        except httpx.HTTPError:
            return 0

    await eventually(probe, lambda status: status == 200, START_TIMEOUT, every=0.2)


async def _stop(processes: list[Process]) -> None:
    for process in processes:
        if process.proc.returncode is None:
            process.proc.terminate()
    for process in processes:
        try:
            async with asyncio.timeout(20):
                await process.proc.wait()
        except TimeoutError:
            process.proc.kill()
            await process.proc.wait()


@pytest.fixture(scope="module")
async def stack(
    create_database: Callable[[], Any],
    settings: Settings,
    nats_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Stack]:
    database_url = await create_database()
    own = settings.model_copy(update={"database_url": database_url})
    await migrate(own, [EVENTS, RECOMMENDER])
    durable = f"telemetry-t{secrets.token_hex(4)}"
    consumers = [("TIPS_EVENTS", durable), ("TIPS_PROFILE", f"{durable}-events")] + [
        ("TIPS_PROFILE", f"{durable}-{suffix}") for suffix in ("profile", "consent", "erasure")
    ]
    tmp = tmp_path_factory.mktemp("telemetry")
    # All at once: ports taken one at a time can repeat.
    *taken, spare = free_ports(5)
    ports = dict(zip(("events", "recommender", "gateway", "metrics"), taken, strict=True))
    nobody = f"127.0.0.1:{spare}"  # services not started here, and Triton
    async with (
        otlp_receiver() as (receiver, otlp_port),
        left_as_found(nats_url, STREAMS, consumers),
    ):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TIPS_", "OTEL_"))}
        env.update(
            PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "gen/python")]),
            TIPS_INSECURE="1",
            TIPS_JWKS_URL=tokens.issuer().jwks_url,
            TIPS_DATABASE_URL=database_url,
            TIPS_DB_ROLE_PREFIX=settings.db_role_prefix,
            TIPS_DB_ROLE_PASSWORD=settings.db_role_password,
            TIPS_NATS_URL=nats_url,
            TIPS_LOG_FORMAT="json",
            TIPS_EVENTS_ADDR=f"127.0.0.1:{ports['events']}",
            TIPS_RECOMMENDER_ADDR=f"127.0.0.1:{ports['recommender']}",
            **{f"TIPS_{name.upper()}_ADDR": nobody for name in ("auth", "profile", "integrations")},
            TIPS_OTEL_EXPORTER="otlp",
            TIPS_OTEL_ENDPOINT=f"http://127.0.0.1:{otlp_port}",
            TIPS_METRICS_EXPORT_SECONDS="0.5",
            OTEL_BSP_SCHEDULE_DELAY="100",  # the span processor's batch delay (ms)
        )
        python = sys.executable
        processes: list[Process] = []
        try:
            events = await _spawn(
                "events",
                [python, "-m", "tests.support.service_process", "events", f"{durable}-events"],
                {**env, "TIPS_PORT": str(ports["events"]), "TIPS_EVENTS_CONSENT_GATE": "0"},
                tmp,
            )
            processes.append(events)
            recommender = await _spawn(
                "recommender",
                [python, "-m", "tests.support.service_process", "recommender", durable],
                {
                    **env,
                    "TIPS_PORT": str(ports["recommender"]),
                    "TIPS_METRICS_PORT": str(ports["metrics"]),
                    "TIPS_RECOMMENDER_MODEL_REPOSITORY": str(tmp / "models"),
                    "TIPS_RECOMMENDER_TRITON_URL": nobody,
                },
                tmp,
            )
            processes.append(recommender)
            gateway = await _spawn(
                "gateway",
                [python, "-m", "tipsmesh.cli", "serve", "gateway"],
                {**env, "TIPS_GATEWAY_PORT": str(ports["gateway"])},
                tmp,
            )
            processes.append(gateway)
            await _wait_serving(events, env["TIPS_EVENTS_ADDR"])
            await _wait_serving(recommender, env["TIPS_RECOMMENDER_ADDR"])
            gateway_url = f"http://127.0.0.1:{ports['gateway']}"
            await _wait_http(gateway, f"{gateway_url}/healthz")
            yield Stack(
                receiver, gateway_url, env["TIPS_RECOMMENDER_ADDR"], ports["metrics"], nats_url,
                {p.name: p.log for p in processes},
            )  # fmt: skip
        finally:
            await _stop(processes)


# --- helpers ----------------------------------------------------------------------------


def _traceparent() -> tuple[str, str, str]:
    """A client's traceparent, its trace id and span id."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def _headers(user: str, traceparent: str) -> dict[str, str]:
    token = dict(tokens.as_user(user))["authorization"]
    return {"authorization": token, "traceparent": traceparent}


def _one(spans: list[Span], **match: Any) -> Span:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, f"expected one span with {match}, got {found} among {spans}"
    return found[0]


def _has(spans: list[Span], *wanted: dict[str, Any]) -> bool:
    return all(any(all(getattr(s, k) == v for k, v in w.items()) for s in spans) for w in wanted)


@contextlib.contextmanager
def _logs_on_failure(stack: Stack) -> Iterator[None]:
    try:
        yield
    except AssertionError as exc:
        tails = "\n".join(
            f"--- {name}\n{path.read_text(errors='replace')[-3000:]}"
            for name, path in stack.logs.items()
        )
        raise AssertionError(f"{exc}\n{tails}") from None


async def _decide(stack: Stack, user: str) -> tuple[str, dict[str, Any]]:
    traceparent, _, _ = _traceparent()
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(
            f"{stack.gateway}/v1/users/me/tips:decide",
            json={"pageSize": 1},
            headers=_headers(user, traceparent),
        )
    assert response.status_code == 200, response.text
    return traceparent, response.json()


# --- the tests --------------------------------------------------------------------------


async def test_a_decision_is_one_trace_from_the_edge_to_the_event_on_the_bus(
    stack: Stack,
) -> None:
    user = f"u_tel_{secrets.token_hex(4)}"
    traceparent, body = await _decide(stack, user)
    _, trace_id, client_span_id = traceparent.split("-")[:3]
    assert len(body["tips"]) == 1
    tip = body["tips"][0]["name"]
    wanted = (
        {"service": "tips-gateway", "kind": SERVER},
        {"service": "tips-gateway", "kind": CLIENT, "name": DECIDE},
        {"service": "tips-recommender", "kind": SERVER, "name": DECIDE},
    )
    with _logs_on_failure(stack):
        spans = await eventually(
            lambda: _async(stack.receiver.spans(trace_id)), lambda s: _has(s, *wanted), 30
        )
    edge = _one(spans, service="tips-gateway", kind=SERVER)
    assert edge.name == f"POST {DECIDE_ROUTE}"
    assert edge.parent_id == client_span_id  # the client's traceparent is honoured
    assert edge.attributes["http.route"] == DECIDE_ROUTE
    assert edge.attributes["http.response.status_code"] == 200
    call = _one(spans, service="tips-gateway", kind=CLIENT)
    assert call.parent_id == edge.span_id and not call.error
    served = _one(spans, service="tips-recommender", kind=SERVER, name=DECIDE)
    assert served.parent_id == call.span_id
    assert served.attributes["rpc.grpc.status_code"] == 0
    # The relay publishes TipDecided with the decision's trace context (outbox headers).
    subject = subject_of(rec_events.TipDecided)

    async def published() -> list[Any]:
        msgs = await stream_messages(stack.nats_url, "TIPS_RECOMMENDER", subject)
        return [m for m in msgs if rec_events.TipDecided.FromString(m.data).tip == tip]

    decided = await eventually(published, lambda found: len(found) == 1, 30, every=0.2)
    carried = (decided[0].headers or {})["traceparent"].split("-")
    assert carried[1:3] == [trace_id, served.span_id]


async def test_a_signal_is_one_trace_from_the_edge_through_the_bus_to_the_recommender(
    stack: Stack,
) -> None:
    user = f"u_tel_{secrets.token_hex(4)}"
    traceparent, trace_id, _ = _traceparent()
    start = datetime.now(UTC) - timedelta(hours=1)
    signal = {
        "clientSignalId": "s1",
        "kind": "SIGNAL_KIND_STEPS",
        "source": "SIGNAL_SOURCE_PHONE",
        "startTime": start.isoformat().replace("+00:00", "Z"),
        "endTime": (start + timedelta(minutes=30)).isoformat().replace("+00:00", "Z"),
        "steps": {"count": "1200"},
    }
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(
            f"{stack.gateway}/v1/users/me/signals:batchIngest",
            json={"signals": [signal]},
            headers=_headers(user, traceparent),
        )
    assert response.status_code == 200, response.text
    consumed = f"{subject_of(signal_events.SignalRecorded)} process"
    wanted = (
        {"service": "tips-gateway", "kind": SERVER},
        {"service": "tips-gateway", "kind": CLIENT, "name": INGEST},
        {"service": "tips-events", "kind": SERVER, "name": INGEST},
        {"service": "tips-recommender", "kind": CONSUMER, "name": consumed},
    )
    with _logs_on_failure(stack):
        spans = await eventually(
            lambda: _async(stack.receiver.spans(trace_id)), lambda s: _has(s, *wanted), 30
        )
    edge = _one(spans, service="tips-gateway", kind=SERVER)
    call = _one(spans, service="tips-gateway", kind=CLIENT)
    ingested = _one(spans, service="tips-events", kind=SERVER)
    consumer = _one(spans, service="tips-recommender", kind=CONSUMER)
    assert call.parent_id == edge.span_id
    assert ingested.parent_id == call.span_id
    # Through the outbox, the relay process and JetStream: a child of the ingest.
    assert consumer.parent_id == ingested.span_id
    assert consumer.attributes["messaging.system"] == "nats"


async def test_the_home_screen_fan_out_is_one_trace(stack: Stack) -> None:
    user = f"u_tel_{secrets.token_hex(4)}"
    traceparent, trace_id, _ = _traceparent()
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(
            f"{stack.gateway}/v1/users/me/home", headers=_headers(user, traceparent)
        )
    assert response.status_code == 200, response.text
    # Profile and integrations do not run here: their parts are missing, not the screen.
    assert {p["part"] for p in response.json()["missingParts"]} == {
        "profile",
        "connections",
    }
    calls = (
        "tips.recommender.v1.RecommenderService/ListTips",
        "tips.profile.v1.ProfileService/GetProfile",
        "tips.integrations.v1.IntegrationsService/ListConnections",
    )
    wanted = (
        {"service": "tips-gateway", "kind": SERVER},
        *({"service": "tips-gateway", "kind": CLIENT, "name": c} for c in calls),
        {"service": "tips-recommender", "kind": SERVER, "name": calls[0]},
    )
    with _logs_on_failure(stack):
        spans = await eventually(
            lambda: _async(stack.receiver.spans(trace_id)), lambda s: _has(s, *wanted), 30
        )
    edge = _one(spans, service="tips-gateway", kind=SERVER)
    by_name = {s.name: s for s in spans if s.kind == CLIENT}
    assert all(by_name[c].parent_id == edge.span_id for c in calls)
    assert not by_name[calls[0]].error
    assert by_name[calls[1]].error and by_name[calls[2]].error  # UNAVAILABLE
    listed = _one(spans, service="tips-recommender", kind=SERVER)
    assert listed.parent_id == by_name[calls[0]].span_id


async def test_red_and_hot_path_metrics_reach_the_receiver(stack: Stack) -> None:
    await _decide(stack, f"u_tel_{secrets.token_hex(4)}")
    receiver = stack.receiver

    def count(service: str, name: str, **labels: Any) -> float:
        return sum(
            getattr(point, "count", None) or getattr(point, "as_int", 0) or point.as_double
            for attrs, point in receiver.points(service, name)
            if all(attrs.get(k) == v for k, v in labels.items())
        )

    def arrived() -> bool:
        return (
            count("tips-recommender", "rpc.server.call.duration", **{"rpc.method": "DecideTips"})
            >= 1
            and count(
                "tips-gateway", "http.server.request.duration", **{"http.route": DECIDE_ROUTE}
            )
            >= 1
            and count("tips-recommender", "tips.recommender.decision.candidates") >= 1
            and count("tips-recommender", "tips.recommender.scorer.fallbacks") >= 1
            and bool(receiver.points("tips-recommender", "tips.bus.consumer.pending"))
        )

    with _logs_on_failure(stack):
        await eventually(lambda: _async(arrived()), bool, 30, every=0.2)
    rpc = receiver.points("tips-recommender", "rpc.server.call.duration")
    decide_ok = [
        p for a, p in rpc
        if a["rpc.method"] == "DecideTips" and a["rpc.response.status_code"] == "OK"
    ]  # fmt: skip
    assert decide_ok and decide_ok[0].count >= 1
    assert decide_ok[0].sum > 0 and sum(decide_ok[0].bucket_counts) == decide_ok[0].count
    assert all(a["rpc.service"] and a["rpc.system"] == "grpc" for a, _ in rpc)
    edge = [
        (a, p) for a, p in receiver.points("tips-gateway", "http.server.request.duration")
        if a["http.route"] == DECIDE_ROUTE
    ]  # fmt: skip
    assert edge[0][0]["http.request.method"] == "POST"
    assert edge[0][0]["http.response.status_code"] == 200
    candidates = receiver.points("tips-recommender", "tips.recommender.decision.candidates")
    assert candidates[0][1].count >= 1 and candidates[0][1].sum >= candidates[0][1].count
    durations = receiver.points("tips-recommender", "tips.recommender.decision.duration")
    assert any(a["tips.outcome"] == "tip" and p.count >= 1 for a, p in durations)
    decided = receiver.points("tips-recommender", "tips.recommender.decision.tips")
    assert sum(p.as_int for _, p in decided) >= 1
    assert {a["tips.explored"] for a, _ in decided} <= {True, False}
    fallbacks = dict(
        (a["tips.scorer.fallback"], p.as_int)
        for a, p in receiver.points("tips-recommender", "tips.recommender.scorer.fallbacks")
    )
    assert fallbacks["onnxruntime"] >= 1  # Triton is down: ONNX Runtime scored
    assert fallbacks["live_statistics"] == 0
    lag = {
        a["messaging.consumer.group.name"]: p.as_int
        for a, p in receiver.points("tips-recommender", "tips.bus.consumer.pending")
    }
    assert any(name.startswith("telemetry-t") for name in lag)
    assert all(pending >= 0 for pending in lag.values())


async def test_the_prometheus_endpoint_serves_the_same_metrics(stack: Stack) -> None:
    await _decide(stack, f"u_tel_{secrets.token_hex(4)}")
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"http://127.0.0.1:{stack.metrics_port}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return sum(
            v for (n, ls), v in samples.items()
            if n == name and all(dict(ls).get(k) == x for k, x in labels.items())
        )  # fmt: skip

    assert (
        value(
            "rpc_server_call_duration_seconds_count",
            rpc_method="DecideTips",
            rpc_response_status_code="OK",
        )
        >= 1
    )
    assert value("tips_recommender_decision_candidates_count") >= 1
    assert value("tips_recommender_decision_duration_seconds_count", tips_outcome="tip") >= 1
    assert value("tips_recommender_decision_tips_total") >= 1
    assert value("tips_recommender_scorer_fallbacks_total", tips_scorer_fallback="onnxruntime") >= 1
    assert any(n == "tips_bus_consumer_pending" for n, _ in samples)
    assert value("process_cpu_seconds_total") > 0  # the process's own collectors


async def test_policy_status_reports_the_scorer_fallback(stack: Stack) -> None:
    await _decide(stack, f"u_tel_{secrets.token_hex(4)}")
    async with grpc.aio.insecure_channel(stack.recommender) as channel:
        status = await rec_grpc.RecommenderInternalServiceStub(channel).GetPolicyStatus(
            rec.GetPolicyStatusRequest(), timeout=10
        )
    assert status.triton_configured and not status.triton_reachable
    assert status.scorer_fell_back
    assert status.scorer_fallback_count >= 1


async def _async(value: Any) -> Any:
    return value
