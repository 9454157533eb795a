"""Long-running bus work that must outlive its dependencies: one retry loop for all of it.

A service's consumers start before the streams they read may exist (the
owner declares its stream when it starts) and the bus may be unreachable for
a while. ``consume_forever`` runs a durable consumer of one event type until
cancelled, retrying with capped exponential backoff while it cannot start;
``retry_forever`` is the same loop for any other step (connecting the bus).

    runtime.spawn(consume_forever(bus, events_pb2.ConsentChanged,
                                  durable="events-consents", handler=model.handle))
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from google.protobuf.message import Message

from kernel.access import GATEWAY
from kernel.bus import Bus, BusError, Delivery, Handler, stream_of, subject_of
from kernel.bus_permissions import consumed_events
from kernel.names import USER
from kernel.settings import SERVICE_NAMES

__all__ = ["consume_forever", "event_user", "retry_forever"]

log = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M", bound=Message)

FIRST_DELAY_S = 0.5
MAX_DELAY_S = 10.0


async def retry_forever(
    what: str,
    attempt: Callable[[], Awaitable[T]],
    *,
    first_delay: float = FIRST_DELAY_S,
    max_delay: float = MAX_DELAY_S,
) -> T:
    """Await ``attempt()`` until it returns, retrying failures; its result.

    Cancellation propagates at once. Each failure is logged with ``what``
    and the delay before the next try, which doubles up to ``max_delay``.
    """
    delay = first_delay
    while True:
        try:
            return await attempt()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "not running, retrying",
                extra={"what": what, "error": repr(exc), "delay": delay},
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)


async def consume_forever(
    bus: Bus,
    message_type: type[M],
    *,
    durable: str,
    handler: Handler[M],
    **options: Any,
) -> None:
    """Run the durable consumer ``durable`` of ``message_type`` until cancelled.

    The stream and subject come from the message's ``(tips.options.v1.event)``
    option. ``Bus.consume`` fails at once while the stream is not declared
    yet and returns only when the bus closes; ``options`` go to it
    (``batch``, ``fetch_timeout``, ``ack_wait``, ...).

    A mesh service consumes only the events its protos declare
    (``(tips.options.v1.consumes)``, which its NATS read permission comes
    from): anything else raises BusError at once instead of retrying forever
    against a server that refuses it.
    """
    check_declared(bus.name, message_type)
    await retry_forever(
        durable,
        lambda: bus.consume(
            stream=stream_of(message_type),
            durable=durable,
            subjects=[subject_of(message_type)],
            message_type=message_type,
            handler=handler,
            **options,
        ),
    )


def check_declared(process: str, message_type: type[Message]) -> None:
    """BusError when mesh process ``process`` did not declare it consumes ``message_type``."""
    name = message_type.DESCRIPTOR.full_name
    if process in (*SERVICE_NAMES, GATEWAY) and name not in consumed_events(process):
        raise BusError(
            f"{process} consumes {name} but does not declare it: add it to "
            f"option (tips.options.v1.consumes) in proto/tips/{process}/v1/ "
            "(its NATS user may read only the streams declared there)"
        )


def event_user(delivery: Delivery[Any]) -> str | None:
    """The user id the event's ``user`` field names (``users/{user}``); None when malformed.

    A handler returns on None, which acks the message: redelivering cannot fix
    it, and a message that fails forever would hold back nothing but noise.
    """
    found = USER.match(getattr(delivery.message, "user", ""))
    if found is None:
        log.error(
            "event without a valid user skipped",
            extra={"subject": delivery.subject, "msg_id": delivery.msg_id},
        )
        return None
    return found[0]
