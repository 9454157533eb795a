"""The recommender through a PostgreSQL restart: UNAVAILABLE with a retry hint while
the server is down, and the first request after it is back answered, not a 500.

Seen before: the decision writer held its connection across the restart and
the first ListTips failed with INTERNAL (asyncpg: connection is closed).
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2

from kernel.errors import status_details, unpack_details
from kernel.settings import Settings
from tests.support.recommender_rig import events_and_recommender
from tests.support.tokens import as_user
from tips.recommender.v1 import recommender_service_pb2 as rec
from tips.recommender.v1 import recommender_service_pb2_grpc as rec_grpc
from tipsmesh.localinfra import LocalPostgres, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
async def own_postgres() -> AsyncIterator[LocalPostgres]:
    """A PostgreSQL of this test alone (it gets stopped and started), on a fixed port."""
    data_dir = Path(tempfile.mkdtemp(prefix="tips-pg-rec-"))
    server = LocalPostgres(data_dir, port=free_port())
    await asyncio.to_thread(server.start)
    yield server
    await asyncio.to_thread(server.stop)
    shutil.rmtree(data_dir, ignore_errors=True)


def _md(user: str) -> tuple[tuple[str, str], ...]:
    return as_user(user)


async def _list(stub: rec_grpc.RecommenderServiceStub, user: str) -> rec.ListTipsResponse:
    return await stub.ListTips(
        rec.ListTipsRequest(parent=f"users/{user}", page_size=1), metadata=_md(user), timeout=20
    )


async def test_a_postgres_restart_gives_retry_hints_then_answers(
    own_postgres: LocalPostgres,
    settings: Settings,
    nats_url: str,
    tmp_path: Path,
) -> None:
    mine = settings.model_copy(update={"database_url": own_postgres.url})
    async with (
        events_and_recommender(mine, nats_url, own_postgres.url, tmp_path) as rig,
        grpc.aio.insecure_channel(rig.recommender.address) as channel,
    ):
        stub = rec_grpc.RecommenderServiceStub(channel)
        await _list(stub, f"u_{secrets.token_hex(4)}")  # the writer holds its connection now
        await asyncio.to_thread(own_postgres.stop)
        await asyncio.to_thread(own_postgres.start)
        # The very first call after a restart is answered: the writer's dead
        # connection is replaced, not handed to the caller as INTERNAL.
        first = await _list(stub, f"u_{secrets.token_hex(4)}")
        assert len(first.tips) == 1

        await asyncio.to_thread(own_postgres.stop)
        with pytest.raises(grpc.aio.AioRpcError) as down:
            await _list(stub, f"u_{secrets.token_hex(4)}")
        assert down.value.code() == grpc.StatusCode.UNAVAILABLE, down.value.details()
        details = unpack_details(status_details(down.value))
        retry = [d for d in details if isinstance(d, error_details_pb2.RetryInfo)]
        assert retry and retry[0].retry_delay.seconds >= 1

        await asyncio.to_thread(own_postgres.start)
        answered = await _list(stub, f"u_{secrets.token_hex(4)}")
        assert len(answered.tips) == 1
