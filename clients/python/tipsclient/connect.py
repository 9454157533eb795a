"""``connect(service)``: a grpc.aio channel into the mesh, mutual TLS and credentials set up.

    async with tipsclient.connect("recommender", token=token, identity="gateway") as channel:
        stub = recommender_service_pb2_grpc.RecommenderServiceStub(channel)

The channel presents a certificate of the mesh CA (which process is calling)
and checks the server's names ``service`` (the server is the one meant); a
token, when given, goes with every call as ``authorization: Bearer <token>``,
the one way servers accept a user (``kernel.identity``; ``x-tips-*`` headers
are refused). Address and certificates come from a `tips up` run dir unless
given (``tipsclient.rundir``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Generator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from tipsclient import rundir
from tipsclient.errors import ClientConfigError, ConnectError
from tipsclient.tls import StrPath, channel_credentials, read_material, tls_channel

AUTHORIZATION_KEY = "authorization"
# The identity of the `tips` tools; public RPCs take `gateway` (docs/security.md).
DEFAULT_IDENTITY = "operator"
_SERVICE_NAME = re.compile(r"[a-z][a-z0-9_-]*")
# Sent only to learn why a connection failed: it fails before reaching any handler.
_PROBE = "/grpc.health.v1.Health/Check"
# How grpc's transport says a TLS handshake failed (for the hint; its words are kept).
_TLS_FAILURE_WORDS = ("handshake", "certificate", "verification", "peer name", "ssl")


def bearer(token: str) -> tuple[tuple[str, str]]:
    """Per-call metadata naming a user: ``metadata=bearer(token)``."""
    return ((AUTHORIZATION_KEY, f"Bearer {_clean_token(token)}"),)


def _raw(data: bytes) -> bytes:
    return data


def _clean_token(token: str) -> str:
    value = token.strip()
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "bearer":  # pasted with its scheme
        value = rest.strip()
    if not value or any(c.isspace() for c in value):
        raise ClientConfigError(
            "token: expected an access token (`tips login` prints one), got "
            + ("an empty string" if not value else "a value with spaces in it")
        )
    return value


class Connection:
    """What ``connect`` returns: ``await`` it for a channel, or ``async with`` it.

    ``await connect(...)`` gives a ready ``grpc.aio.Channel`` the caller
    closes; ``async with connect(...) as channel`` closes it at the end.
    """

    def __init__(
        self,
        service: str,
        address: str,
        credentials: grpc.ChannelCredentials,
        *,
        wait: float | None,
        options: Sequence[tuple[str, Any]],
        interceptors: Sequence[grpc.aio.ClientInterceptor] | None,
    ) -> None:
        self.service = service
        self.address = address
        self._credentials = credentials
        self._wait = wait
        self._options = options
        self._interceptors = interceptors
        self._opened: grpc.aio.Channel | None = None

    def __repr__(self) -> str:
        return f"Connection({self.service!r}, {self.address!r})"

    async def open(self) -> grpc.aio.Channel:
        """A new channel; with ``wait``, once its TLS handshake has succeeded."""
        channel = tls_channel(
            self.address,
            self._credentials,
            server_name=self.service,
            interceptors=self._interceptors,
            options=self._options,
        )
        if self._wait is not None:
            try:
                await self._ready(channel, self._wait)
            except BaseException:
                await channel.close()
                raise
        return channel

    def __await__(self) -> Generator[Any, None, grpc.aio.Channel]:
        return self.open().__await__()

    async def __aenter__(self) -> grpc.aio.Channel:
        self._opened = await self.open()
        return self._opened

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        opened, self._opened = self._opened, None
        if opened is not None:
            await opened.close()

    async def _ready(self, channel: grpc.aio.Channel, wait: float) -> None:
        """Connect now, so a wrong address, CA or server name fails here, saying which."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        state = channel.get_state(try_to_connect=True)
        while state != grpc.ChannelConnectivity.READY:
            if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                raise ConnectError(await self._why(channel))
            left = deadline - loop.time()
            if left <= 0:
                raise ConnectError(
                    f"{self.service} at {self.address}: no connection within {wait:g} s"
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await channel.wait_for_state_change(state)
            state = channel.get_state(try_to_connect=True)

    async def _why(self, channel: grpc.aio.Channel) -> str:
        """The transport's reason for the failed connection, and what it likely means."""
        try:
            probe = channel.unary_unary(_PROBE, request_serializer=_raw, response_deserializer=_raw)
            await probe(b"", timeout=5, wait_for_ready=False)
        except grpc.aio.AioRpcError as exc:
            details = exc.details() or exc.code().name
        else:  # it connected after all: let the caller's calls say what happens
            return f"{self.service} at {self.address}: the connection failed once"
        where = f"cannot connect to {self.service} at {self.address}"
        lowered = details.lower()
        if any(word in lowered for word in _TLS_FAILURE_WORDS):
            hint = (
                f"the server did not prove it is {self.service!r}: its certificate names "
                "another service, or the CA given as ca did not sign it (is that the right "
                "address?)"
            )
        elif "socket closed" in lowered or "reset" in lowered:
            hint = (
                "the server closed the connection in the handshake: it likely refused this "
                "client's certificate (is cert from the mesh's CA?)"
            )
        elif "refused" in lowered:
            hint = "nothing listens there (is the mesh up? `make up`)"
        else:
            hint = "see the transport's reason"
        return f"{where}: {hint}. Transport: {details}"


def connect(
    service: str,
    *,
    token: str | None = None,
    identity: str = DEFAULT_IDENTITY,
    address: str | None = None,
    ca: StrPath | None = None,
    cert: StrPath | None = None,
    key: StrPath | None = None,
    run_dir: StrPath | None = None,
    wait: float | None = 10.0,
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
) -> Connection:
    """A channel to the mesh service ``service`` (``"events"``, ``"recommender"``, ...).

    - ``token``: an access token sent with every call (``authorization:
      Bearer``); for one user per call instead, pass ``metadata=bearer(t)``.
    - ``identity``: which development certificate of the run dir to present:
      ``operator`` (tools; internal RPCs list it where operators may call
      them) or ``gateway`` (the public, user-facing RPCs), or any process's.
    - ``address`` (``host:port``), ``ca``, ``cert``, ``key`` (PEM files):
      explicit, for a mesh that is not a local `tips up`; whatever is not
      given comes from the run dir (``run_dir``, else ``$TIPS_RUN_DIR``, else
      ``.run`` here or in a parent).
    - ``wait``: seconds to wait for the connection, which fails at the first
      refused handshake; ``None`` gives a lazy channel (each call connects).

    Raises ClientConfigError (no run dir, unknown service or identity,
    unreadable files, a bad token) at once, ConnectError when awaited.
    """
    if not _SERVICE_NAME.fullmatch(service):
        raise ClientConfigError(
            f"service: expected a mesh service name such as 'events', got {service!r}"
        )
    if (cert is None) != (key is None):
        raise ClientConfigError("cert and key go together: give both, or neither")
    mesh = None
    if run_dir is not None or address is None or ca is None or cert is None:
        mesh = rundir.find(run_dir)
        resolved = mesh.address_of(service)  # also says when there is no such service
        address = address or resolved
    assert address is not None
    ca_file, cert_file, key_file = ca, cert, key
    if mesh is not None:
        who = mesh.identity(identity)
        _check_identity(mesh, who, explicit_cert=cert is not None)
        ca_file = ca if ca is not None else who.ca_file
        cert_file = cert if cert is not None else who.cert_file
        key_file = key if key is not None else who.key_file
    assert ca_file is not None and cert_file is not None and key_file is not None
    material = read_material(ca_file, cert_file, key_file, names=("ca", "cert", "key"))
    credentials = channel_credentials(material)
    if token is not None:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(_clean_token(token))
        )
    return Connection(
        service, address, credentials, wait=wait, options=options, interceptors=interceptors
    )


def _check_identity(mesh: rundir.RunDir, who: rundir.Identity, *, explicit_cert: bool) -> None:
    if explicit_cert or who.cert_file.is_file():
        return
    issued = sorted(p.stem for p in Path(mesh.tls_dir).glob("*.pem") if p.name != who.ca_file.name)
    raise ClientConfigError(
        f"identity: no development certificate for {who.name!r} in {mesh.tls_dir} "
        f"(there are: {', '.join(issued) or 'none'}); `tips certs {mesh.tls_dir} {who.name}` "
        "issues one"
    )
