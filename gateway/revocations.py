"""Revoked sessions at the edge: the deny list fed by ``SessionRevoked``.

An access token verifies by signature alone until it expires, so after a
sign-out, a session revocation, a refresh-token reuse or a user's deletion it
would keep passing the edge. The auth service publishes
``tips.auth.v1.SessionRevoked`` for every revocation; each gateway process
follows that subject with its own consumer (``Bus.follow``: every replica
needs every revocation), starting from the last token-lifetime window so a
gateway started later knows the recent revocations too, and keeps the
revoked session ids until no token of theirs can still be valid.
``JwtEdgeAuth`` refuses a token whose ``sid`` is in the set
(``SESSION_REVOKED``). docs/edge-auth.md has the failure modes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from kernel.bus import Bus, Delivery, stream_of, subject_of
from kernel.consumers import check_declared, retry_forever
from kernel.settings import Settings
from kernel.timestamps import to_datetime
from tips.auth.v1 import events_pb2

log = logging.getLogger("tips.gateway.revocations")

# `users/{user}/sessions/{session}`
_SESSION_NAME = re.compile(r"^users/[^/]+/sessions/([^/]+)$")
# Expired entries are swept at most this often (lookups also drop them).
PRUNE_INTERVAL_S = 30.0


class RevokedSessions:
    """Session ids refused until a wall-clock deadline (``time.time()`` seconds)."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._pruned = time.monotonic()

    def __len__(self) -> int:
        return len(self._until)

    def add(self, session: str, until: float) -> None:
        """Refuse ``session`` until ``until``; a later deadline already held stays."""
        if until > self._until.get(session, 0.0):
            self._until[session] = until
        if time.monotonic() - self._pruned >= PRUNE_INTERVAL_S:
            self.prune()

    def is_revoked(self, session: str) -> bool:
        """One dict lookup on the hot path; an expired entry is dropped."""
        until = self._until.get(session)
        if until is None:
            return False
        if time.time() < until:
            return True
        del self._until[session]
        return False

    def prune(self, now: float | None = None) -> int:
        """Drop entries past their deadline; how many were dropped."""
        now = time.time() if now is None else now
        self._pruned = time.monotonic()
        gone = [s for s, until in self._until.items() if until <= now]
        for session in gone:
            del self._until[session]
        return len(gone)


def session_id(name: str) -> str | None:
    """``s`` of ``users/u/sessions/s`` (the token's ``sid``); None for anything else."""
    match = _SESSION_NAME.match(name)
    return match.group(1) if match else None


def refuse_until(
    event: events_pb2.SessionRevoked, ttl_s: float, leeway_s: float, now: float
) -> float:
    """When no access token of the revoked session can still verify.

    The revocation time + token lifetime + leeway, or the session's last
    token expiry + leeway when the event says that is later (auth may run
    with a longer lifetime than ours). An event without a time counts from now.
    """
    revoked = to_datetime(event.occur_time).timestamp() if event.HasField("occur_time") else now
    until = revoked + ttl_s + leeway_s
    if event.HasField("access_token_expire_time"):
        expire = to_datetime(event.access_token_expire_time).timestamp()
        until = max(until, expire + leeway_s)
    return until


class RevocationFeed:
    """Follows ``SessionRevoked`` on the bus into a ``RevokedSessions``.

    ``start()`` returns at once: connecting (retried forever) and catching up
    run in the background, so the gateway starts when the bus is down.
    ``state`` is ``connecting`` (never reached the bus), ``catching_up``
    (reading the recent window), ``live`` or ``disconnected`` (lost after
    being live; what was read is still enforced).
    """

    def __init__(
        self,
        settings: Settings,
        revoked: RevokedSessions,
        *,
        connect: Callable[[], Awaitable[Bus]] | None = None,
    ) -> None:
        self.revoked = revoked
        self._settings = settings
        self._ttl_s = float(settings.auth_access_token_ttl_seconds)
        self._leeway_s = float(settings.jwt_leeway_seconds)
        # Tokens of a session revoked longer ago than this have all expired.
        self.window_s = self._ttl_s + self._leeway_s
        self._connect = connect or (lambda: Bus.connect(settings, "gateway"))
        self._bus: Bus | None = None
        self._task: asyncio.Task[None] | None = None
        self._caught_up = False
        self.seen = 0

    @property
    def state(self) -> str:
        if self._bus is None:
            return "connecting"
        if not self._caught_up:
            return "catching_up"
        return "live" if self._bus.is_connected else "disconnected"

    @property
    def ready(self) -> bool:
        """The recent window was read once: tokens revoked before we started are refused."""
        return self._caught_up

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="revocation-feed")

    async def _run(self) -> None:
        self._bus = await retry_forever("revocations: bus", self._connect)
        start = datetime.now(UTC) - timedelta(seconds=self.window_s)
        check_declared(self._bus.name, events_pb2.SessionRevoked)  # its NATS read grant
        await self._bus.follow(
            stream=stream_of(events_pb2.SessionRevoked),
            subjects=[subject_of(events_pb2.SessionRevoked)],
            message_type=events_pb2.SessionRevoked,
            handler=self._on_revoked,
            start_time=start,
            on_caught_up=self._on_caught_up,
        )

    def _on_caught_up(self) -> None:
        if not self._caught_up:
            log.info("revocations: live", extra={"revoked_sessions": len(self.revoked)})
        self._caught_up = True

    async def _on_revoked(self, delivery: Delivery[events_pb2.SessionRevoked]) -> None:
        self.apply(delivery.message)

    def apply(self, event: events_pb2.SessionRevoked, now: float | None = None) -> bool:
        """Add the event's session; False when it names none or is already over."""
        now = time.time() if now is None else now
        session = session_id(event.session)
        if session is None:
            log.warning("revocations: event without a session name", extra={"id": event.event_id})
            return False
        self.seen += 1
        until = refuse_until(event, self._ttl_s, self._leeway_s, now)
        if until <= now:
            return False
        self.revoked.add(session, until)
        return True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._bus is not None:
            await self._bus.close()
