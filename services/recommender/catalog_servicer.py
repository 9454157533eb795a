"""``tips.recommender.v1.TipCatalogService``: the admin API of the catalog.

Every method needs the "admin" scope. Each change bumps the catalog version
and reloads this process's in-memory catalog; other replicas see the new
version within ``recommender_catalog_refresh_seconds``.
"""

from __future__ import annotations

from typing import Any

from kernel import paging
from kernel.db import Database
from kernel.errors import Aborted, AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from kernel.identity import require_scope
from policy import catalog
from services.recommender import catalog_store
from services.recommender.catalog_store import CatalogKeeper
from tips.recommender.v1 import tip_catalog_service_pb2 as pb
from tips.recommender.v1 import tip_catalog_service_pb2_grpc as pb_grpc

ADMIN = "admin"
RESOURCE = "tips.app/CatalogTip"


class TipCatalogServicer(pb_grpc.TipCatalogServiceServicer):
    def __init__(self, db: Database, keeper: CatalogKeeper) -> None:
        self.db = db
        self.keeper = keeper

    async def ListCatalogTips(
        self, request: pb.ListCatalogTipsRequest, context: Any
    ) -> pb.ListCatalogTipsResponse:
        require_scope(ADMIN)
        if request.page_size < 0:
            raise InvalidArgument([("page_size", "must not be negative")])
        size = min(request.page_size or 50, 500)  # larger values are lowered
        fingerprint = f"{request.category}|{request.enabled_only}"
        cursor = paging.decode(request.page_token, fingerprint)
        async with self.db.session() as session:
            rows = await catalog_store.list_page(
                session,
                limit=size,
                after=cursor.id if cursor else "",
                category=request.category,
                enabled_only=request.enabled_only,
            )
            version = await catalog_store.current_version(session)
        page = rows[:size]
        token = ""
        if len(rows) > size:
            last = page[-1]
            token = paging.encode(paging.Cursor(last.update_time, last.tip_id), fingerprint)
        return pb.ListCatalogTipsResponse(
            catalog_tips=[catalog_store.tip_from_row(r) for r in page],
            next_page_token=token,
            catalog_version=version,
        )

    async def GetCatalogTip(
        self, request: pb.GetCatalogTipRequest, context: Any
    ) -> pb.GetCatalogTipResponse:
        require_scope(ADMIN)
        tip_id = catalog.parse_catalog_name(request.name)
        async with self.db.session() as session:
            row = await catalog_store.get(session, tip_id)
        if row is None:
            raise NotFound(request.name, resource_type=RESOURCE)
        return pb.GetCatalogTipResponse(catalog_tip=catalog_store.tip_from_row(row))

    async def CreateCatalogTip(
        self, request: pb.CreateCatalogTipRequest, context: Any
    ) -> pb.CreateCatalogTipResponse:
        require_scope(ADMIN)
        if not catalog.ID_RE.match(request.catalog_tip_id):
            raise InvalidArgument(
                [("catalog_tip_id", "3 to 63 lower case letters, digits, _; a letter first")]
            )
        tip = catalog.content(request.catalog_tip)
        tip.name = catalog.catalog_name(request.catalog_tip_id)
        tip.enabled = request.catalog_tip.enabled
        catalog.validate_tip(tip)
        async with self.db.transaction() as session:
            await catalog_store.lock(session)
            if await catalog_store.get(session, request.catalog_tip_id) is not None:
                raise AlreadyExists(f"{tip.name} already exists")
            version = catalog_store.bump(await catalog_store.current_version(session))
            stored = await catalog_store.put(session, tip, version)
            await catalog_store.set_version(session, version)
        await self.keeper.reload()
        return pb.CreateCatalogTipResponse(catalog_tip=stored)

    async def UpdateCatalogTip(
        self, request: pb.UpdateCatalogTipRequest, context: Any
    ) -> pb.UpdateCatalogTipResponse:
        require_scope(ADMIN)
        tip_id = catalog.parse_catalog_name(request.catalog_tip.name, "catalog_tip.name")
        async with self.db.transaction() as session:
            await catalog_store.lock(session)
            row = await catalog_store.get(session, tip_id, for_update=True)
            if row is None:
                raise NotFound(request.catalog_tip.name, resource_type=RESOURCE)
            stored = catalog_store.tip_from_row(row)
            if request.catalog_tip.etag and request.catalog_tip.etag != stored.etag:
                raise Aborted(f"{stored.name} changed since it was read (etag mismatch)")
            updated = catalog.apply_mask(stored, request.catalog_tip, request.update_mask)
            catalog.validate_tip(updated)
            if catalog.content_hash(updated) == stored.etag and updated.enabled == stored.enabled:
                return pb.UpdateCatalogTipResponse(catalog_tip=stored)  # nothing changed
            version = catalog_store.bump(await catalog_store.current_version(session))
            result = await catalog_store.put(session, updated, version)
            await catalog_store.set_version(session, version)
        await self.keeper.reload()
        return pb.UpdateCatalogTipResponse(catalog_tip=result)

    async def DeleteCatalogTip(
        self, request: pb.DeleteCatalogTipRequest, context: Any
    ) -> pb.DeleteCatalogTipResponse:
        require_scope(ADMIN)
        tip_id = catalog.parse_catalog_name(request.name)
        async with self.db.transaction() as session:
            await catalog_store.lock(session)
            row = await catalog_store.get(session, tip_id, for_update=True)
            if row is None:
                raise NotFound(request.name, resource_type=RESOURCE)
            if request.etag and request.etag != row.etag:
                raise Aborted(f"{request.name} changed since it was read (etag mismatch)")
            if await catalog_store.is_referenced(session, tip_id):
                raise FailedPrecondition(
                    f"decisions point at {request.name}: disable it (enabled: false) instead"
                )
            await catalog_store.delete(session, tip_id)
            version = catalog_store.bump(await catalog_store.current_version(session))
            await catalog_store.set_version(session, version)
        await self.keeper.reload()
        return pb.DeleteCatalogTipResponse()

    async def ImportCatalogTips(
        self, request: pb.ImportCatalogTipsRequest, context: Any
    ) -> pb.ImportCatalogTipsResponse:
        require_scope(ADMIN)
        tips_in = list(request.catalog_tips)
        catalog.validate_catalog(request.catalog_version, tips_in)
        async with self.db.transaction() as session:
            result = await catalog_store.import_catalog(
                session, request.catalog_version, tips_in, validate_only=request.validate_only
            )
            version = await catalog_store.current_version(session)
        if not request.validate_only:
            await self.keeper.reload()
        return pb.ImportCatalogTipsResponse(
            catalog_version=version if not request.validate_only else request.catalog_version,
            created_catalog_tips=result.created,
            updated_catalog_tips=result.updated,
            disabled_catalog_tips=result.disabled,
            unchanged_count=result.unchanged,
        )
