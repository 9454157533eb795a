"""Mutual TLS as the mesh runs it: certificates from ``tipsmesh.devcerts`` (as
`tips up` issues them), and grpc.aio channels presenting one of them.

Test modules import the ``certs`` and ``rogue`` fixtures from here (module
scope: one CA per test module).
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from tipsmesh.devcerts import MeshIdentity, ensure_mesh_certs

MESH = ("profile", "recommender", "gateway", "operator")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, MeshIdentity]:
    """A certificate for each of ``MESH``, from the mesh's CA."""
    return ensure_mesh_certs(tmp_path_factory.mktemp("tls"), MESH)


@pytest.fixture(scope="module")
def rogue(tmp_path_factory: pytest.TempPathFactory) -> dict[str, MeshIdentity]:
    """Certificates with the same names, from a CA the mesh does not trust."""
    return ensure_mesh_certs(tmp_path_factory.mktemp("rogue"), MESH)


def credentials(who: MeshIdentity | None, ca: Path) -> grpc.ChannelCredentials:
    """Trusting ``ca``; presenting ``who``'s certificate (None: no client certificate)."""
    if who is None:
        return grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=who.key_file.read_bytes(),
        certificate_chain=who.cert_file.read_bytes(),
    )


def tls_channel(
    address: str, who: MeshIdentity | None, ca: Path, server_name: str = "profile"
) -> grpc.aio.Channel:
    """A channel to ``address`` that expects the server to be ``server_name``."""
    return grpc.aio.secure_channel(
        address,
        credentials(who, ca),
        options=[("grpc.ssl_target_name_override", server_name)],
    )
