"""Re-wrap every sealed record's data key under another KEK, online.

Used after adding a new key to the ring and making it current: every row
still under an old key gets its data key re-sealed under the target, in
small batches, each row locked only for its own short transaction. Readers
keep working throughout, since the ring still holds the old key; once the
result shows no failures the old key can be removed. Idempotent: rows
already under the target are counted as unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, select, tuple_, update

from kernel.db import Database
from services.integrations import domain, store
from services.integrations.settings import IntegrationsSettings, load_integrations_settings
from services.integrations.vault import KeyRing, UnknownKey, VaultError

BATCH = 200


@dataclass
class RewrapResult:
    target_key_id: str
    rewrapped: int = 0
    unchanged: int = 0
    # (connection name, reason, key missing from the ring) per record not rewrapped.
    failures: list[tuple[str, str, bool]] = field(default_factory=list)


def key_ring(settings: IntegrationsSettings) -> KeyRing:
    return KeyRing(settings.kek_ring(), settings.integrations_kek_current)


async def _rewrap_table(
    db: Database,
    ring: KeyRing,
    table: Table,
    keys: tuple[str, ...],
    owner_of: Any,
    target: str,
    validate_only: bool,
    result: RewrapResult,
) -> None:
    cols = [table.c[k] for k in keys]
    last: tuple[Any, ...] | None = None
    while True:
        async with db.transaction() as session:
            query = select(table).order_by(*cols).limit(BATCH).with_for_update()
            if last is not None:
                query = query.where(tuple_(*cols) > tuple_(*last))
            rows = (await session.execute(query)).all()
            for row in rows:
                if row.key_id == target:
                    result.unchanged += 1
                    continue
                try:
                    sealed = ring.rewrap(owner_of(row), store.envelope_of(row), target)
                except UnknownKey:
                    result.failures.append(
                        (_connection(row), f"key {row.key_id!r} not in ring", True)
                    )
                    continue
                except VaultError:
                    result.failures.append((_connection(row), "record does not open", False))
                    continue
                result.rewrapped += 1
                if not validate_only:
                    await session.execute(
                        update(table)
                        .where(*(c == row._mapping[c.name] for c in cols))
                        .values(key_id=sealed.key_id, wrapped_key=sealed.wrapped_key)
                    )
        if len(rows) < BATCH:
            return
        last = tuple(rows[-1]._mapping[k] for k in keys)


def _connection(row: Any) -> str:
    return domain.connection_name(row.user_id, row.connection_id)


async def rewrap_all(
    db: Database, ring: KeyRing, target_key_id: str, *, validate_only: bool = False
) -> RewrapResult:
    if target_key_id not in ring:
        raise UnknownKey(f"KEK {target_key_id!r} is not in the key ring")
    result = RewrapResult(target_key_id)
    await _rewrap_table(
        db, ring, store.tokens, ("user_id", "connection_id"), _connection,
        target_key_id, validate_only, result,
    )  # fmt: skip
    await _rewrap_table(
        db, ring, store.oauth_states, ("state_hash",), lambda row: f"oauth-state/{row.state_hash}",
        target_key_id, validate_only, result,
    )  # fmt: skip
    return result


async def rewrap_tokens(settings: Any, target_key_id: str = "") -> RewrapResult:
    """The CLI's entry point: connect, rewrap under ``target_key_id`` (default current), close."""
    config = load_integrations_settings(settings)
    ring = key_ring(config)
    db = await Database.connect(config, "integrations")
    try:
        return await rewrap_all(db, ring, target_key_id or ring.current)
    finally:
        await db.close()
