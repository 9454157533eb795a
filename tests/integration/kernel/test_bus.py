"""kernel.bus against a real nats-server with JetStream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import pytest

from kernel.bus import Bus, BusError, Delivery, StreamSpec, stream_of, streams_for, subject_of
from kernel.settings import Settings
from tests.support.waiting import stream_messages

pytestmark = pytest.mark.integration


def test_subject_and_stream_come_from_the_proto_option(test_events: dict[str, Any]) -> None:
    thing, other = test_events["ThingHappened"], test_events["OtherThing"]
    assert subject_of(thing) == "tipstest.kernel.v1.thing_happened"
    assert subject_of(thing(event_id="x")) == "tipstest.kernel.v1.thing_happened"
    assert stream_of(thing) == "TIPSTEST_KERNEL"
    specs = streams_for(thing, other, thing, max_age=60, max_bytes=1024)
    assert specs == [
        StreamSpec(
            "TIPSTEST_KERNEL",
            ("tipstest.kernel.v1.thing_happened", "tipstest.kernel.v1.other_thing"),
            max_age=60,
            max_bytes=1024,
        )
    ]
    with pytest.raises(BusError, match=r"tipstest.kernel.v1.NotAnEvent declares no"):
        subject_of(test_events["NotAnEvent"])


@pytest.fixture
async def stream(settings: Settings, bus_ns: str, cleanup_streams: list[str]) -> tuple[str, str]:
    """A stream of this test only, capturing subject prefix ``t<ns>.``."""
    name, prefix = f"T{bus_ns}", f"t{bus_ns}"
    bus = await Bus.connect(settings, "setup")
    try:
        spec = StreamSpec(name, (f"{prefix}.>",), max_age=300, max_bytes=1 << 20, memory=True)
        await bus.ensure_streams([spec])
        await bus.ensure_streams([spec])  # idempotent
        cleanup_streams.append(name)
    finally:
        await bus.close()
    return name, prefix


@pytest.fixture
async def bus(settings: Settings) -> Any:
    bus = await Bus.connect(settings, "test")
    yield bus
    await bus.close()


async def test_publish_dedupes_by_msg_id_and_sets_headers(
    bus: Bus, stream: tuple[str, str], nats_url: str, test_events: dict[str, Any]
) -> None:
    name, prefix = stream
    thing = test_events["ThingHappened"]
    subject = f"{prefix}.thing"
    first = await bus.publish(thing(event_id="e1", count=1), msg_id="e1", subject=subject)
    again = await bus.publish(thing(event_id="e1", count=1), msg_id="e1", subject=subject)
    other = await bus.publish(thing(event_id="e2", count=2), msg_id="e2", subject=subject)
    assert not first.duplicate and again.duplicate and not other.duplicate
    assert again.seq == first.seq and other.seq == first.seq + 1

    msgs = await stream_messages(nats_url, name, subject)
    assert [thing.FromString(m.data).event_id for m in msgs] == ["e1", "e2"]
    assert msgs[0].headers["Nats-Msg-Id"] == "e1"
    assert msgs[0].headers["Content-Type"] == (
        "application/protobuf; proto=tipstest.kernel.v1.ThingHappened"
    )


async def test_publish_without_stream_is_a_clear_error(
    bus: Bus, bus_ns: str, test_events: dict[str, Any]
) -> None:
    with pytest.raises(BusError, match="no stream captures subject"):
        await bus.publish(test_events["ThingHappened"](), msg_id="x", subject=f"nostream{bus_ns}.x")


def _collector(
    seen: list[Delivery[Any]], want: int, fail_first: set[str] | None = None
) -> tuple[Callable[[Delivery[Any]], Awaitable[None]], asyncio.Event]:
    """A handler recording every delivery; ``done`` is set after ``want`` successes.

    Messages whose id is in ``fail_first`` raise on their first delivery.
    """
    done = asyncio.Event()
    failing = set(fail_first or ())
    successes = 0

    async def handler(delivery: Delivery[Any]) -> None:
        nonlocal successes
        seen.append(delivery)
        if delivery.msg_id in failing:
            failing.discard(delivery.msg_id)
            raise RuntimeError("transient failure")
        successes += 1
        if successes >= want:
            done.set()

    return handler, done


async def _consume_until(bus: Bus, done: asyncio.Event, **kwargs: Any) -> None:
    task = asyncio.create_task(bus.consume(**kwargs))
    try:
        async with asyncio.timeout(10):
            await done.wait()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _ack_floor(nats_url: str, stream: str, durable: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().consumer_info(stream, durable)
        return int(info.ack_floor.stream_seq)
    finally:
        await nc.close()


async def _wait_ack_floor(nats_url: str, stream: str, durable: str, seq: int) -> None:
    for _ in range(100):
        if await _ack_floor(nats_url, stream, durable) >= seq:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"ack floor never reached {seq}")


async def test_durable_consumer_resumes_with_a_new_bus(
    settings: Settings, nats_url: str, stream: tuple[str, str], test_events: dict[str, Any]
) -> None:
    name, prefix = stream
    thing = test_events["ThingHappened"]
    subject = f"{prefix}.thing"
    first_bus = await Bus.connect(settings, "first")
    for i in range(3):
        await first_bus.publish(thing(event_id=f"a{i}", count=i), msg_id=f"a{i}", subject=subject)
    seen: list[Delivery[Any]] = []
    handler, done = _collector(seen, 3)
    common = dict(stream=name, durable="resume", subjects=[subject], message_type=thing)
    await _consume_until(first_bus, done, handler=handler, **common)
    await _wait_ack_floor(nats_url, name, "resume", 3)
    await first_bus.close()
    assert [d.message.count for d in seen] == [0, 1, 2]
    assert [d.stream_sequence for d in seen] == [1, 2, 3]
    assert all(d.num_delivered == 1 and d.subject == subject for d in seen)

    second_bus = await Bus.connect(settings, "second")
    try:
        for i in range(3, 5):
            await second_bus.publish(
                thing(event_id=f"a{i}", count=i), msg_id=f"a{i}", subject=subject
            )
        later: list[Delivery[Any]] = []
        handler, done = _collector(later, 2)
        await _consume_until(second_bus, done, handler=handler, **common)
        await asyncio.sleep(0.3)  # a redelivery of old messages would show up here
        assert [d.msg_id for d in later] == ["a3", "a4"]
    finally:
        await second_bus.close()


async def test_failed_handler_is_redelivered_then_acked(
    bus: Bus, nats_url: str, stream: tuple[str, str], test_events: dict[str, Any]
) -> None:
    name, prefix = stream
    thing = test_events["ThingHappened"]
    subject = f"{prefix}.thing"
    await bus.publish(thing(event_id="f1"), msg_id="f1", subject=subject)
    await bus.publish(thing(event_id="ok"), msg_id="ok", subject=subject)
    seen: list[Delivery[Any]] = []
    handler, done = _collector(seen, 2, fail_first={"f1"})
    await _consume_until(
        bus, done, stream=name, durable="retry", subjects=[subject], message_type=thing,
        handler=handler, retry_delay=0.05,
    )  # fmt: skip
    assert [(d.msg_id, d.num_delivered) for d in seen] == [("f1", 1), ("ok", 1), ("f1", 2)]
    await _wait_ack_floor(nats_url, name, "retry", 2)


async def test_poison_messages_are_terminated_and_the_loop_goes_on(
    bus: Bus, nats_url: str, stream: tuple[str, str], test_events: dict[str, Any]
) -> None:
    name, prefix = stream
    thing, other = test_events["ThingHappened"], test_events["OtherThing"]
    subject = f"{prefix}.thing"
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        # Claims the right type but is not a valid protobuf encoding.
        await js.publish(
            subject, b"\xff\xff\xff", headers={
                "Nats-Msg-Id": "garbage",
                "Content-Type": "application/protobuf; proto=tipstest.kernel.v1.ThingHappened",
            },
        )  # fmt: skip
        await js.publish(subject, b"", headers={"Nats-Msg-Id": "no-type"})
    finally:
        await nc.close()
    await bus.publish(other(event_id="wrong"), msg_id="wrong", subject=subject)
    await bus.publish(thing(event_id="good"), msg_id="good", subject=subject)
    seen: list[Delivery[Any]] = []
    handler, done = _collector(seen, 1)
    await _consume_until(
        bus, done, stream=name, durable="poison", subjects=[subject], message_type=thing,
        handler=handler,
    )  # fmt: skip
    assert [d.msg_id for d in seen] == ["good"]
    await _wait_ack_floor(nats_url, name, "poison", 4)  # terminated count as handled


async def _supports_filter_subjects(nats_url: str) -> bool:
    nc = await nats.connect(nats_url)
    try:
        major, minor = (int(p) for p in nc._server_info["version"].split(".")[:2])
    finally:
        await nc.close()
    return (major, minor) >= (2, 10)


async def test_consumer_filters_several_subjects(
    bus: Bus, stream: tuple[str, str], nats_url: str, test_events: dict[str, Any]
) -> None:
    name, prefix = stream
    thing = test_events["ThingHappened"]
    for i, sub in enumerate(("a", "b", "c")):
        await bus.publish(thing(event_id=sub), msg_id=f"m{i}", subject=f"{prefix}.{sub}")
    seen: list[Delivery[Any]] = []
    handler, done = _collector(seen, 2)
    if not await _supports_filter_subjects(nats_url):
        with pytest.raises(BusError, match=r"needs nats-server >= 2\.10"):
            await bus.consume(
                stream=name, durable="multi", subjects=[f"{prefix}.a", f"{prefix}.c"],
                message_type=thing, handler=handler,
            )  # fmt: skip
        return
    await _consume_until(
        bus, done, stream=name, durable="multi", subjects=[f"{prefix}.a", f"{prefix}.c"],
        message_type=thing, handler=handler,
    )  # fmt: skip
    assert sorted(d.message.event_id for d in seen) == ["a", "c"]


async def test_connect_to_nothing_fails_clearly(settings: Settings) -> None:
    bad = settings.model_copy(update={"nats_url": "nats://127.0.0.1:1"})
    with pytest.raises(BusError, match=r"127.0.0.1:1 unreachable after 2 attempts"):
        await Bus.connect(bad, "x", attempts=2, delay=0.01)


async def test_connect_to_a_list_finds_the_server_that_answers(settings: Settings) -> None:
    # A cluster's URL list with its first node down: any server that answers will do.
    listed = settings.model_copy(update={"nats_url": f"nats://127.0.0.1:1, {settings.nats_url}"})
    bus = await Bus.connect(listed, "listed", attempts=2, delay=0.01)
    try:
        assert bus.is_connected
        assert bus.stream_replicas == 1  # settings.nats_stream_replicas: one server, R1
    finally:
        await bus.close()


async def test_trace_context_travels_in_headers(
    bus: Bus, stream: tuple[str, str], test_events: dict[str, Any]
) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    name, prefix = stream
    thing = test_events["ThingHappened"]
    subject = f"{prefix}.thing"
    with TracerProvider().get_tracer("test").start_as_current_span("producer") as span:
        await bus.publish(thing(event_id="t1"), msg_id="t1", subject=subject)
        sent_trace = span.get_span_context().trace_id
    seen_traces: list[int] = []
    done = asyncio.Event()

    async def handler(delivery: Delivery[Any]) -> None:
        assert delivery.headers["traceparent"].split("-")[1] == f"{sent_trace:032x}"
        seen_traces.append(trace.get_current_span().get_span_context().trace_id)
        done.set()

    await _consume_until(
        bus, done, stream=name, durable="traced", subjects=[subject], message_type=thing,
        handler=handler,
    )  # fmt: skip
    assert seen_traces == [sent_trace]
