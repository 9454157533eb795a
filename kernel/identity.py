"""The caller's identity: who the end user is, proven, and the checks on it.

A user is known to a service only by an access token it verifies itself
(``kernel.tokens``): the gateway forwards the token it checked as
``authorization: Bearer <jwt>``, and every mesh hop forwards the token of
the request it is serving (``kernel.clients``), so the next service checks
it again. No header names a user: ``x-tips-user`` and the other ``x-tips-*``
identity headers of earlier versions are refused wherever they appear.
Which *process* is calling is a separate question, answered by its mTLS
certificate (``kernel.tls``, ``kernel.access``).

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

AUTHORIZATION_KEY = "authorization"
# Headers that once named the user unchecked: refused now (see docstring).
IDENTITY_KEYS = ("x-tips-user", "x-tips-scopes", "x-tips-session")


@dataclass(frozen=True)
class Caller:
    """Who is calling: a user id, their granted scopes, their session."""

    user: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    session: str | None = None
    # The verified access token, passed on to the next hop; never printed.
    token: str | None = field(default=None, repr=False, compare=False)

    @property
    def resource_name(self) -> str:
        return f"users/{self.user}"

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes

    def to_metadata(self) -> list[tuple[str, str]]:
        """The metadata that proves this identity to the next hop (its token)."""
        if not self.token:
            return []
        return [(AUTHORIZATION_KEY, f"Bearer {self.token}")]


_caller: ContextVar[Caller | None] = ContextVar("tips_caller", default=None)


def authorization_of(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The ``authorization`` value of request metadata, if any.

    Raises Unauthenticated when an unchecked identity header (``x-tips-*``)
    is present: whoever sends one expects to be trusted for it.
    """
    found: str | None = None
    for key, value in metadata or ():
        if key in IDENTITY_KEYS:
            raise Unauthenticated(
                f"the {key!r} header is not accepted: a user is identified by an access "
                "token only (authorization: Bearer <token>)",
                reason="IDENTITY_HEADER_REFUSED",
                metadata={"header": key},
            )
        if key == AUTHORIZATION_KEY and isinstance(value, str):
            found = value
    return found


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
