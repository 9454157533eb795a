"""The catalog's tables and queries, and the in-memory catalog decisions read.

``catalog_tips`` holds each tip's author-written content as a serialized
``CatalogTip`` (the proto is the schema), ``catalog_meta`` the current catalog
version, ``catalog_imports`` each imported file's version and content hash
(re-importing the same file is a no-op; the same version with other content
is refused). A single create/update/delete bumps the version to
``<imported>+<n>``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    Row,
    Table,
    Text,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from kernel import db as kernel_db
from kernel.db import Database
from kernel.errors import AlreadyExists
from kernel.timestamps import timestamp
from policy import catalog
from services.recommender.store import metadata, tips
from tips.recommender.v1 import catalog_tip_pb2

log = logging.getLogger(__name__)

catalog_tips = Table(
    "catalog_tips",
    metadata,
    Column("tip_id", Text, primary_key=True),
    Column("data", LargeBinary, nullable=False),
    Column("category", Text, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("etag", Text, nullable=False),
    Column("catalog_version", Text, nullable=False),
    Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
catalog_meta = Table(
    "catalog_meta",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", Text, nullable=False),
    Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
catalog_imports = Table(
    "catalog_imports",
    metadata,
    Column("version", Text, primary_key=True),
    Column("content_hash", Text, nullable=False),
    Column("import_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


def tip_from_row(row: Row[Any]) -> catalog_tip_pb2.CatalogTip:
    tip = catalog_tip_pb2.CatalogTip.FromString(row.data)
    tip.name = catalog.catalog_name(row.tip_id)
    tip.enabled = row.enabled
    tip.etag = row.etag
    tip.catalog_version = row.catalog_version
    tip.create_time.CopyFrom(timestamp(row.create_time))
    tip.update_time.CopyFrom(timestamp(row.update_time))
    return tip


async def lock(session: AsyncSession) -> None:
    """Serialize catalog writers (version bumps must not interleave)."""
    await kernel_db.lock(session, "recommender.catalog")


async def current_version(session: AsyncSession) -> str:
    found = await session.execute(select(catalog_meta.c.version).where(catalog_meta.c.id == 1))
    return str(found.scalar() or "")


async def set_version(session: AsyncSession, version: str) -> None:
    stmt = insert(catalog_meta).values(id=1, version=version)
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["id"], set_={"version": version, "update_time": func.now()}
        )
    )


def bump(version: str) -> str:
    """``v1`` -> ``v1+1`` -> ``v1+2``: a single edit after an import."""
    base, _, n = version.partition("+")
    return f"{base}+{int(n) + 1 if n.isdigit() else 1}"


async def get(session: AsyncSession, tip_id: str, *, for_update: bool = False) -> Row[Any] | None:
    stmt = select(catalog_tips).where(catalog_tips.c.tip_id == tip_id)
    if for_update:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).first()


async def put(
    session: AsyncSession, tip: catalog_tip_pb2.CatalogTip, version: str
) -> catalog_tip_pb2.CatalogTip:
    """Insert or replace one tip's content; returns it as stored."""
    tip_id = catalog.parse_catalog_name(tip.name)
    content = catalog.content(tip)
    values = {
        "data": content.SerializeToString(deterministic=True),
        "category": tip.category,
        "enabled": tip.enabled,
        "etag": catalog.content_hash(tip),
        "catalog_version": version,
    }
    stmt = insert(catalog_tips).values(tip_id=tip_id, **values)
    upsert = stmt.on_conflict_do_update(
        index_elements=["tip_id"], set_={**values, "update_time": func.now()}
    ).returning(*catalog_tips.c)
    row = (await session.execute(upsert)).one()
    return tip_from_row(row)


async def delete(session: AsyncSession, tip_id: str) -> None:
    await session.execute(catalog_tips.delete().where(catalog_tips.c.tip_id == tip_id))


async def is_referenced(session: AsyncSession, tip_id: str) -> bool:
    found = await session.execute(
        select(tips.c.tip_id).where(tips.c.catalog_tip == catalog.catalog_name(tip_id)).limit(1)
    )
    return found.first() is not None


async def list_page(
    session: AsyncSession, *, limit: int, after: str, category: str, enabled_only: bool
) -> list[Row[Any]]:
    stmt = select(catalog_tips).where(catalog_tips.c.tip_id > after)
    if category:
        stmt = stmt.where(catalog_tips.c.category == category)
    if enabled_only:
        stmt = stmt.where(catalog_tips.c.enabled.is_(True))
    stmt = stmt.order_by(catalog_tips.c.tip_id).limit(limit + 1)
    return list((await session.execute(stmt)).all())


@dataclass(frozen=True)
class ImportResult:
    version: str
    created: list[str]
    updated: list[str]
    disabled: list[str]
    unchanged: int


async def import_catalog(
    session: AsyncSession,
    version: str,
    tips_in: list[catalog_tip_pb2.CatalogTip],
    *,
    validate_only: bool = False,
) -> ImportResult:
    """Make the catalog what the file says (see ImportCatalogTips). Caller validated it."""
    await lock(session)
    digest = catalog.catalog_hash(tips_in)
    known = (
        await session.execute(
            select(catalog_imports.c.content_hash).where(catalog_imports.c.version == version)
        )
    ).scalar()
    if known is not None and known != digest:
        raise AlreadyExists(
            f"catalog version {version!r} was imported with other content",
            metadata={"catalog_version": version},
        )
    stored = {r.tip_id: r for r in (await session.execute(select(catalog_tips))).all()}
    created: list[str] = []
    updated: list[str] = []
    unchanged = 0
    incoming = {catalog.parse_catalog_name(t.name): t for t in tips_in}
    for tip_id, tip in incoming.items():
        row = stored.get(tip_id)
        if row is None:
            created.append(tip_id)
        elif row.etag != catalog.content_hash(tip) or (not row.enabled and tip.enabled):
            updated.append(tip_id)
        else:
            unchanged += 1
    disabled = sorted(t for t, r in stored.items() if t not in incoming and r.enabled)
    if known is not None:  # the same file again: nothing to do
        return ImportResult(version, [], [], [], len(incoming))
    if not validate_only:
        for tip_id in created + updated:
            await put(session, incoming[tip_id], version)
        if disabled:
            await session.execute(
                catalog_tips.update()
                .where(catalog_tips.c.tip_id.in_(disabled))
                .values(enabled=False, catalog_version=version, update_time=func.now())
            )
        await session.execute(insert(catalog_imports).values(version=version, content_hash=digest))
        await set_version(session, version)
    return ImportResult(version, created, updated, disabled, unchanged)


# --- the in-memory catalog -------------------------------------------------------------


class CatalogKeeper:
    """The enabled catalog as decisions read it; reloaded when the version changes."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.version = ""
        self.entries: tuple[catalog.Entry, ...] = ()
        self.enabled_count = 0

    async def seed(self, path: str) -> ImportResult:
        """Import the catalog file shipped with the service (idempotent by version)."""
        version, tips_in = catalog.from_file(path)
        async with self.db.transaction() as session:
            known = (
                await session.execute(
                    select(catalog_imports.c.content_hash).where(
                        catalog_imports.c.version == version
                    )
                )
            ).scalar()
            if known is not None:
                if known != catalog.catalog_hash(tips_in):
                    log.error(
                        "catalog file differs from the imported version; keeping the database",
                        extra={"catalog_version": version},
                    )
                return ImportResult(version, [], [], [], len(tips_in))
            result = await import_catalog(session, version, tips_in)
        log.info(
            "catalog imported",
            extra={"catalog_version": version, "new_tips": len(result.created)},
        )
        return result

    async def reload(self) -> None:
        async with self.db.session() as session:
            version = await current_version(session)
            rows = (
                await session.execute(
                    select(catalog_tips)
                    .where(catalog_tips.c.enabled.is_(True))
                    .order_by(catalog_tips.c.tip_id)
                )
            ).all()
        entries = tuple(catalog.entry(tip_from_row(r)) for r in rows)
        # One assignment each: a decision in flight keeps the tuple it started with.
        self.entries, self.version, self.enabled_count = entries, version, len(entries)

    async def watch(self, interval: float) -> None:
        """Pick up changes made by other replicas (cheap version check)."""
        while True:
            await asyncio.sleep(interval)
            try:
                async with self.db.session() as session:
                    version = await current_version(session)
                if version != self.version:
                    await self.reload()
            except Exception as exc:
                log.warning("catalog refresh failed", extra={"error": repr(exc)})
