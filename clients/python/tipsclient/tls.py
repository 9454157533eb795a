"""Mutual TLS into the mesh: the part mesh processes and outside callers share.

Every gRPC port of the mesh requires a client certificate signed by the mesh
CA, and a caller must check that the server it reached is the service it
meant: the server's certificate names the service (its first DNS subject
alternative name), whatever address it listens on, so the channel's target
name is the service name. ``kernel.tls`` builds the mesh's own channels and
servers on this module (from ``TIPS_TLS_*`` settings), ``tipsclient.connect``
builds a caller's (from a run dir or explicit files).

Only grpcio is imported here: this module ships in the ``tips-client``
distribution, without the rest of the mesh.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from tipsclient.errors import CertificateFileError

# The gRPC channel option that makes the TLS handshake check this name, not the address.
TARGET_NAME_OVERRIDE = "grpc.ssl_target_name_override"

StrPath = str | os.PathLike[str]


@dataclass(frozen=True)
class Material:
    """The PEM bytes of a process's TLS identity: the CA it trusts, its certificate and key."""

    ca: bytes
    cert: bytes
    key: bytes


def read_material(
    ca_file: StrPath,
    cert_file: StrPath,
    key_file: StrPath,
    *,
    names: tuple[str, str, str] = ("CA file", "certificate file", "key file"),
) -> Material:
    """Read the three files; CertificateFileError naming the first one that cannot be read.

    ``names`` is what the error calls each file (``kernel.tls`` names its settings).
    """

    def read(path: StrPath, what: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise CertificateFileError(what, str(path), exc.strerror or str(exc)) from None

    ca_name, cert_name, key_name = names
    return Material(
        ca=read(ca_file, ca_name), cert=read(cert_file, cert_name), key=read(key_file, key_name)
    )


def channel_credentials(material: Material) -> grpc.ChannelCredentials:
    """Credentials a channel presents (the certificate and key) and trusts (the CA)."""
    return grpc.ssl_channel_credentials(
        root_certificates=material.ca, private_key=material.key, certificate_chain=material.cert
    )


def tls_channel(
    address: str,
    credentials: grpc.ChannelCredentials,
    *,
    server_name: str,
    interceptors: Sequence[Any] | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """A channel to ``server_name`` at ``address`` (host:port) over TLS.

    The handshake fails unless the server's certificate names ``server_name``
    and was signed by the CA of ``credentials``.
    """
    opts = [(k, v) for k, v in options if k != TARGET_NAME_OVERRIDE]
    # The server must prove it is `server_name`, whatever address it listens on.
    opts.append((TARGET_NAME_OVERRIDE, server_name))
    return grpc.aio.secure_channel(address, credentials, options=opts, interceptors=interceptors)
