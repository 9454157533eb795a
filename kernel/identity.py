"""The caller's identity, read from request metadata in one place.

The gateway verifies the access token and forwards who the caller is as
metadata; mesh peers forward the identity of the request they are serving
(``kernel.clients`` does it):

- ``x-tips-user``: the user id, e.g. ``u_123`` (resource ``users/u_123``);
- ``x-tips-scopes``: space separated scopes, e.g. ``tips.read admin``;
- ``x-tips-session``: the session id, when there is one.

Services trust this metadata without checking a token again because only the
gateway and mesh peers can reach them: services listen on the internal
network only, and in production every hop is mutually authenticated with mTLS
(the mesh's certificates), so an outsider can neither connect nor forge it.
The gateway strips any ``x-tips-*`` header a client sends.

The server interceptor sets ``current_caller()`` for each RPC; servicers
call ``require_caller()``, ``require_owner(name)``, ``require_user_parent(parent)``
or ``require_scope(s)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from kernel.errors import InvalidArgument, PermissionDenied, Unauthenticated
from kernel.names import USER

USER_KEY = "x-tips-user"
SCOPES_KEY = "x-tips-scopes"
SESSION_KEY = "x-tips-session"
IDENTITY_KEYS = (USER_KEY, SCOPES_KEY, SESSION_KEY)


@dataclass(frozen=True)
class Caller:
    """Who is calling: a user id, their granted scopes, their session."""

    user: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    session: str | None = None

    @property
    def resource_name(self) -> str:
        return f"users/{self.user}"

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes

    def to_metadata(self) -> list[tuple[str, str]]:
        """The metadata that carries this identity to the next hop."""
        md = [(USER_KEY, self.user)]
        if self.scopes:
            md.append((SCOPES_KEY, " ".join(sorted(self.scopes))))
        if self.session:
            md.append((SESSION_KEY, self.session))
        return md


_caller: ContextVar[Caller | None] = ContextVar("tips_caller", default=None)


def caller_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> Caller | None:
    """Parse the identity metadata; None when no user is named."""
    values: dict[str, str] = {}
    for key, value in metadata or ():
        if key in IDENTITY_KEYS and isinstance(value, str):
            values[key] = value.strip()
    user = values.get(USER_KEY)
    if not user:
        return None
    scopes = frozenset(values.get(SCOPES_KEY, "").split())
    return Caller(user=user, scopes=scopes, session=values.get(SESSION_KEY) or None)


def current_caller() -> Caller | None:
    """The caller of the RPC being served, if it named one."""
    return _caller.get()


def set_caller(caller: Caller | None) -> None:
    """Set the caller for the rest of the current context (the interceptor)."""
    _caller.set(caller)


@contextmanager
def acting_as(caller: Caller | None) -> Iterator[None]:
    """Run a block as ``caller`` (the interceptor, background work, tests)."""
    token = _caller.set(caller)
    try:
        yield
    finally:
        _caller.reset(token)


def require_caller() -> Caller:
    """The caller; Unauthenticated when the request named none."""
    caller = _caller.get()
    if caller is None:
        raise Unauthenticated("this method needs an authenticated caller")
    return caller


def parse_user(resource_name: str, field_name: str = "name") -> str:
    """The ``{user}`` of ``users/{user}[/...]``; InvalidArgument naming the field."""
    parts = resource_name.split("/")
    if len(parts) < 2 or parts[0] != "users" or not parts[1] or "" in parts:
        raise InvalidArgument(
            [(field_name, f"must be a resource name users/{{user}}[/...], got {resource_name!r}")]
        )
    return parts[1]


def require_owner(resource_name: str, field_name: str = "name") -> Caller:
    """Check the caller owns ``users/{user}/...``; return the caller.

    Raises InvalidArgument (naming ``field_name``) when the name is malformed,
    Unauthenticated without a caller, PermissionDenied for another user's data.
    """
    user = parse_user(resource_name, field_name)
    caller = require_caller()
    if caller.user != user:
        raise PermissionDenied(
            f"the caller may not access {resource_name}",
            metadata={"resource": resource_name},
        )
    return caller


def require_user_parent(parent: str, field: str = "parent") -> str:
    """The user id of ``parent``, exactly ``users/{user}``, which the caller must be."""
    user_id = USER.parse_one(parent, field)
    require_owner(parent, field)
    return user_id


def require_scope(scope: str) -> Caller:
    """Check the caller was granted ``scope``; return the caller."""
    caller = require_caller()
    if not caller.has_scope(scope):
        raise PermissionDenied(
            f"this method needs the {scope!r} scope",
            reason="MISSING_SCOPE",
            metadata={"scope": scope},
        )
    return caller
