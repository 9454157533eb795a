"""Which mesh processes may call which RPC, read from the protos.

Each RPC declares its direct callers next to its route access rule:
``option (tips.options.v1.access) = {callers: ["integrations"]}``. An RPC
with an HTTP rule may also be called by the gateway (that is what the rule
is for); an RPC without one (the ``*InternalService``s) by the callers it
lists and nobody else. The caller is the name in its mTLS certificate
(``kernel.tls.peer_name``). Health and reflection are open to any process
with a mesh certificate (probes, tooling).

In plaintext (``TIPS_INSECURE=1``) there is no verified name, and the
check is skipped: that mode trusts the network, and says so at start.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from google.api import annotations_pb2
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from kernel.errors import PermissionDenied
from tips.options.v1 import options_pb2

GATEWAY = "gateway"
# The `tips` admin commands and operators' tools.
OPERATOR = "operator"


def callers_of(method: MethodDescriptor) -> frozenset[str]:
    """The processes that may call ``method`` directly (module docstring)."""
    options = method.GetOptions()
    allowed: set[str] = set()
    if options.HasExtension(options_pb2.access):
        allowed.update(options.Extensions[options_pb2.access].callers)
    if options.HasExtension(annotations_pb2.http):
        allowed.add(GATEWAY)
    return frozenset(allowed)


def callers_table(services: Iterable[ServiceDescriptor]) -> dict[str, frozenset[str]]:
    """``/pkg.Service/Method`` -> allowed callers, for every method of ``services``."""
    return {
        f"/{service.full_name}/{method.name}": callers_of(method)
        for service in services
        for method in service.methods
    }


class CallerPolicy:
    """The allowed callers of the methods a server serves (filled when they are bound)."""

    def __init__(self, *, verify_peers: bool) -> None:
        self.verify_peers = verify_peers
        self._table: dict[str, frozenset[str]] = {}

    def add(self, table: Mapping[str, frozenset[str]]) -> None:
        self._table.update(table)

    def check(self, method: str, peer: str | None) -> None:
        """Raise PermissionDenied unless ``peer`` may call ``method``."""
        if not self.verify_peers:
            return
        if peer is None:
            # A TLS server always has a peer name; no name means no mesh certificate.
            raise PermissionDenied(
                "the caller presented no mesh certificate", reason="CALLER_NOT_VERIFIED"
            )
        allowed = self._table.get(method)
        if allowed is None or peer in allowed:
            return  # health, reflection: any mesh process
        raise PermissionDenied(
            f"{peer!r} may not call {method.lstrip('/')}; its callers are "
            f"{', '.join(sorted(allowed)) or 'none'} (tips.options.v1.access.callers)",
            reason="CALLER_NOT_ALLOWED",
            metadata={"caller": peer, "method": method.lstrip("/")},
        )
