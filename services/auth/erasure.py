"""Erasure in the auth service (docs/erasure.md): the user's sessions end, their rows go.

On ``tips.profile.v1.UserDeleted``, in one transaction with the message's
claim: every active session is revoked (reason USER_DELETED, one
``SessionRevoked`` each through the outbox, so consumers of revocations drop
the sessions at once), then the user's refresh tokens, sessions, identities
and the user row are deleted. Introspection and refresh fail from then on.

Kept on purpose, none of them names the user:
- ``used_nonces``: SHA-256 of (provider, nonce) until the ID token expires;
  forgetting them early would let that ID token be replayed;
- ``signin_failures``: counters per client address, not per user;
- ``web_signins``: sign-ins not completed yet (no user known), expire in minutes.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.db import Database
from kernel.erasure import ErasureConsumer
from services.auth import store
from services.auth.core import AuthCore
from tips.auth.v1 import session_pb2

DURABLE = "auth-erasure"


def _rowcount(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


async def purge_user(core: AuthCore, session: AsyncSession, user_id: str) -> int:
    """Revoke and delete everything of ``user_id`` in ``session``; rows deleted."""
    await core.revoke_all_in(
        session, user_id, session_pb2.SESSION_REVOKE_REASON_USER_DELETED, datetime.now(UTC)
    )
    s, rt = store.sessions, store.refresh_tokens
    own_sessions = select(s.c.id).where(s.c.user_id == user_id).scalar_subquery()
    count = 0
    # Children first: the foreign keys cascade too, explicit deletes keep it obvious.
    for statement in (
        delete(rt).where(rt.c.session_id.in_(own_sessions)),
        delete(s).where(s.c.user_id == user_id),
        delete(store.identities).where(store.identities.c.user_id == user_id),
        delete(store.users).where(store.users.c.id == user_id),
    ):
        count += _rowcount(await session.execute(statement))
    return count


def eraser(db: Database, core: AuthCore, durable: str = DURABLE) -> ErasureConsumer:
    async def purge(session: AsyncSession, user_id: str) -> int:
        return await purge_user(core, session, user_id)

    return ErasureConsumer(db, store.processed_messages, durable, purge)
