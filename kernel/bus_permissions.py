"""Who may publish what on NATS: each service its own events, derived from the protos.

A service owns the events of its own proto package (``tips.<service>.v1``
messages carrying the ``(tips.options.v1.event)`` option, the same ones its
``ServiceDefinition`` declares the streams of), so it may publish exactly
their subjects and create or update exactly their streams. Everyone
may read (create, fetch from and delete consumers; acknowledge), which is
what consuming another service's events takes. Nobody may delete or purge a
stream, or publish another service's events: a ``UserDeleted`` forged by a
process that is not the profile service is refused by the server.

``authorization_block`` renders the users for ``nats-server``'s config.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kernel.bus import StreamSpec, streams_for
from tips.options.v1 import options_pb2

__all__ = ["NatsUser", "authorization_block", "owned_streams", "permissions_for"]

# The JetStream API calls consuming needs, on any stream (nats-py's subjects).
_READ = (
    "$JS.API.INFO",
    "$JS.API.STREAM.INFO.*",
    "$JS.API.STREAM.NAMES",
    "$JS.API.STREAM.LIST",
    "$JS.API.CONSUMER.CREATE.>",
    "$JS.API.CONSUMER.DURABLE.CREATE.>",
    "$JS.API.CONSUMER.INFO.>",
    "$JS.API.CONSUMER.MSG.NEXT.>",
    "$JS.API.CONSUMER.DELETE.>",
    "$JS.API.CONSUMER.NAMES.*",
    "$JS.API.CONSUMER.LIST.*",
    "$JS.ACK.>",
)
# Replies (JetStream API answers, publish acks, pulled messages) come to inboxes.
_SUBSCRIBE = ("_INBOX.>",)


@dataclass(frozen=True)
class NatsUser:
    name: str
    password: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...] = _SUBSCRIBE


def owned_streams(service: str) -> list[StreamSpec]:
    """The streams of the events ``tips.<service>.v1`` declares (none for a service without)."""
    try:
        module = importlib.import_module(f"tips.{service}.v1.events_pb2")
    except ModuleNotFoundError:
        return []
    events = [
        message._concrete_class
        for message in module.DESCRIPTOR.message_types_by_name.values()
        if message.GetOptions().HasExtension(options_pb2.event)
    ]
    return streams_for(*events)


def permissions_for(streams: Sequence[StreamSpec]) -> tuple[str, ...]:
    """The subjects a process owning ``streams`` may publish to."""
    own: list[str] = []
    for spec in streams:
        own += spec.subjects
        own += [f"$JS.API.STREAM.CREATE.{spec.name}", f"$JS.API.STREAM.UPDATE.{spec.name}"]
    return (*own, *_READ)


def authorization_block(users: Sequence[NatsUser]) -> str:
    """``authorization { users = [...] }`` for a ``nats-server`` config file."""
    entries = []
    for user in users:
        permissions: Mapping[str, object] = {
            "publish": {"allow": list(user.publish)},
            "subscribe": {"allow": list(user.subscribe)},
        }
        # JSON is valid in the NATS config syntax, and quotes whatever a password holds.
        entries.append(
            json.dumps({"user": user.name, "password": user.password, "permissions": permissions})
        )
    return "authorization {\n  users = [\n    " + ",\n    ".join(entries) + "\n  ]\n}\n"
