"""Who may publish and read what on NATS, derived from the protos.

- **Publish.** A service owns the events of its own proto package
  (``tips.<service>.v1`` messages carrying the ``(tips.options.v1.event)``
  option, the same ones its ``ServiceDefinition`` declares the streams of),
  so it may publish exactly their subjects and create or update exactly
  their streams. A ``UserDeleted`` forged by a process that is not the
  profile service is refused by the server.
- **Read.** A process declares the events it consumes in its package's
  ``<service>_service.proto`` (``option (tips.options.v1.consumes)``); it
  may create, fetch from, delete and acknowledge consumers on exactly their
  streams, and read its own streams' state. ``kernel.consumers`` refuses
  to start a consumer of an event the process did not declare, so the code
  and the grant cannot drift apart.
- Nobody may delete or purge a stream.

``authorization_block`` renders the users for ``nats-server``'s config.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache

from google.protobuf import descriptor_pool, message_factory

from kernel.bus import StreamSpec, stream_of, streams_for
from tips.options.v1 import options_pb2

__all__ = [
    "NatsUser",
    "authorization_block",
    "consumed_events",
    "consumed_streams",
    "mesh_user",
    "owned_streams",
    "permissions_for",
]

# The JetStream API calls anyone may make: account info and stream names.
_ANYONE = ("$JS.API.INFO", "$JS.API.STREAM.NAMES")


def _read_subjects(stream: str) -> tuple[str, ...]:
    """The JetStream API calls consuming from ``stream`` takes (nats-py's subjects)."""
    return (
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.>",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.>",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        f"$JS.API.CONSUMER.NAMES.{stream}",
        f"$JS.API.CONSUMER.LIST.{stream}",
        f"$JS.ACK.{stream}.>",
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


@cache
def consumed_events(process: str) -> frozenset[str]:
    """Full names of the events ``process`` declares it consumes (``tips.<process>.v1``)."""
    try:
        package = importlib.import_module(f"tips.{process}.v1")
    except ModuleNotFoundError:
        return frozenset()
    names: set[str] = set()
    for module_info in pkgutil.iter_modules(package.__path__):
        if not module_info.name.endswith("_service_pb2"):
            continue
        module = importlib.import_module(f"{package.__name__}.{module_info.name}")
        options = module.DESCRIPTOR.GetOptions()
        if options.HasExtension(options_pb2.consumes):
            names.update(options.Extensions[options_pb2.consumes].events)
    return frozenset(names)


def consumed_streams(process: str) -> list[str]:
    """The streams of the events ``process`` consumes, sorted."""
    streams = set()
    for name in consumed_events(process):
        # Events live in their package's events.proto: import it so the pool has them.
        importlib.import_module(f"{name.rpartition('.')[0]}.events_pb2")
        descriptor = descriptor_pool.Default().FindMessageTypeByName(name)
        streams.add(stream_of(message_factory.GetMessageClass(descriptor)))
    return sorted(streams)


def permissions_for(streams: Sequence[StreamSpec], consumed: Sequence[str] = ()) -> tuple[str, ...]:
    """The subjects a process owning ``streams`` and consuming from ``consumed`` may
    publish to (JetStream API calls are publishes)."""
    own: list[str] = []
    for spec in streams:
        own += spec.subjects
        own += [f"$JS.API.STREAM.CREATE.{spec.name}", f"$JS.API.STREAM.UPDATE.{spec.name}"]
    readable = sorted({*consumed, *(spec.name for spec in streams)})
    reads = [subject for stream in readable for subject in _read_subjects(stream)]
    return (*own, *_ANYONE, *reads)


def mesh_user(name: str, password: str) -> NatsUser:
    """The NATS user of mesh process ``name`` (a service or the gateway), from the protos."""
    return NatsUser(name, password, permissions_for(owned_streams(name), consumed_streams(name)))


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
