"""Mutual TLS between mesh processes: server and channel credentials, peer names.

Every gRPC server requires a client certificate signed by the mesh CA and
every channel presents this process's own; a process is named by its
certificate's first DNS subject alternative name (``recommender``,
``gateway``, ``operator``). Channels check that the server they reached is the
service they meant (the target name is the service name, whatever address it
listens on). Settings name the files: ``TIPS_TLS_CA_FILE``,
``TIPS_TLS_CERT_FILE``, ``TIPS_TLS_KEY_FILE``; ``tips up`` issues them
(``tipsmesh.devcerts``), compose and Kubernetes mount them.

Plaintext only with ``TIPS_INSECURE=1``: no certificates, no peer names, a
warning at start. Internal RPCs then accept any caller (there is no one to
check), user identity is still a verified token (``kernel.identity``).

Reading the files, a channel's credentials and the server-name check are
``tipsclient.tls``, shared with the typed client outside callers install
(``clients/python``, which must not depend on the kernel); this module adds
what comes from settings, the server side and peer names.
"""

from __future__ import annotations

import logging
import ssl
from functools import cache
from typing import Any

import grpc

from kernel.settings import Settings, SettingsError
from tipsclient.errors import CertificateFileError
from tipsclient.tls import Material, read_material, tls_channel
from tipsclient.tls import channel_credentials as _credentials_of

log = logging.getLogger("tips.tls")

_SAN = "x509_subject_alternative_name"
_SETTING_NAMES = ("TIPS_TLS_CA_FILE", "TIPS_TLS_CERT_FILE", "TIPS_TLS_KEY_FILE")


@cache
def _read(ca_file: str, cert_file: str, key_file: str) -> Material:
    try:
        return read_material(ca_file, cert_file, key_file, names=_SETTING_NAMES)
    except CertificateFileError as exc:
        raise SettingsError(f"invalid configuration: {exc}") from None


def material(settings: Settings) -> Material | None:
    """The CA, certificate and key; None when ``TIPS_INSECURE`` is set.

    SettingsError when neither is configured: plaintext is never a default.
    """
    if settings.insecure:
        return None
    paths = {
        "TIPS_TLS_CA_FILE": settings.tls_ca_file,
        "TIPS_TLS_CERT_FILE": settings.tls_cert_file,
        "TIPS_TLS_KEY_FILE": settings.tls_key_file,
    }
    missing = [name for name, value in paths.items() if not value]
    if missing:
        raise SettingsError(
            f"invalid configuration: {', '.join(missing)} not set: mesh traffic is mutual TLS "
            "(`tips up` issues development certificates); set TIPS_INSECURE=1 only to run "
            "in plaintext on a development machine"
        )
    return _read(str(settings.tls_ca_file), str(settings.tls_cert_file), str(settings.tls_key_file))


def warn_if_insecure(settings: Settings, what: str) -> None:
    """One warning line at start when this process runs without TLS."""
    if settings.insecure:
        log.warning(
            "TIPS_INSECURE is set: %s runs in plaintext; peers are not authenticated and "
            "internal RPCs accept any caller (development only)",
            what,
        )


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """Credentials for a server port that requires mesh client certificates."""
    found = material(settings)
    if found is None:
        return None
    return grpc.ssl_server_credentials(
        [(found.key, found.cert)], root_certificates=found.ca, require_client_auth=True
    )


def server_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS for a service's port (``kernel.h2server``): this process's certificate
    shown, a client certificate the mesh CA signed required, ALPN ``h2``;
    None when insecure."""
    found = material(settings)
    if found is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(settings.tls_cert_file), str(settings.tls_key_file))
    context.load_verify_locations(cadata=found.ca.decode("ascii"))
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])
    return context


def channel_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """Credentials a channel presents (this process's certificate) and trusts (the CA)."""
    found = material(settings)
    return None if found is None else _credentials_of(found)


def grpc_target(address: str) -> tuple[str, list[tuple[str, Any]]]:
    """A gRPC target and its channel options for ``address``: ``host:port``;
    replicas as ``ip:port,ip:port`` (IPv4 literals), taken in turn per call; or
    ``dns:///host:port``, every address of the name taken in turn (gRPC's own
    resolver looks the name up again as connections fail)."""
    address = address.strip()
    if address.startswith("dns:///"):
        return address, [("grpc.lb_policy_name", "round_robin")]
    replicas = [a.strip() for a in address.split(",") if a.strip()]
    if len(replicas) <= 1:
        return address, []
    return "ipv4:" + ",".join(replicas), [("grpc.lb_policy_name", "round_robin")]


def secure_channel(
    address: str,
    settings: Settings,
    *,
    server_name: str,
    interceptors: Any = None,
    options: list[tuple[str, Any]] | None = None,
) -> grpc.aio.Channel:
    """A channel to ``server_name`` at ``address`` (one, or replicas: ``grpc_target``):
    mTLS, or plaintext when insecure."""
    target, balancing = grpc_target(address)
    options = [*(options or ()), *balancing]
    credentials = channel_credentials(settings)
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    # The server must prove it is `server_name`, whatever address it listens on.
    return tls_channel(
        target,
        credentials,
        server_name=server_name,
        interceptors=interceptors,
        options=options,
    )


def client_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS for a client that speaks HTTP/2 itself (the edge's upstream calls):
    this process's certificate shown, the server's checked against the mesh CA
    (the caller names the server it expects); None when insecure."""
    found = material(settings)
    if found is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=found.ca.decode("ascii"))
    context.load_cert_chain(str(settings.tls_cert_file), str(settings.tls_key_file))
    context.set_alpn_protocols(["h2"])
    return context


def peer_name(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The calling process's name from its verified certificate; None in plaintext."""
    try:
        names = context.auth_context().get(_SAN)
    except Exception:  # no auth context on this transport
        return None
    if not names:
        return None
    first = names[0]
    return first.decode("ascii", "replace") if isinstance(first, bytes) else str(first)
