"""The events service and the recommender, started in process on free ports.

The set-up the thin-path and hot-path tests share: both services migrated
into the session database, the test playing the profile service on the bus
(its ConsentChanged events grant consents), and on exit a shared NATS left
as found (our consumers and the streams we created go).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from kernel.bus import Bus, streams_for
from kernel.clients import close_channels
from kernel.migrations import migrate
from kernel.server import ServiceServer
from kernel.settings import Settings
from services.events.service import SERVICE as EVENTS
from services.events.settings import EventsSettings
from services.recommender.service import DURABLE
from services.recommender.service import definition as recommender_definition
from services.recommender.settings import RecommenderSettings
from tests.support.streams import left_as_found
from tips.profile.v1 import events_pb2 as profile_events

STREAMS = ("TIPS_EVENTS", "TIPS_RECOMMENDER", "TIPS_PROFILE")


@dataclass
class Rig:
    events: ServiceServer
    recommender: ServiceServer
    db: asyncpg.Connection
    bus: Bus  # the test's own connection, publishing as the profile service
    durable: str = ""  # the recommender's consumers' name (a replica shares it)


@contextlib.asynccontextmanager
async def events_and_recommender(
    settings: Settings,
    nats_url: str,
    database_url: str,
    models: Path,
    **recommender_settings: Any,
) -> AsyncIterator[Rig]:
    """Both services up (the recommender's events_addr is the events server)."""
    # Our own durable: on a shared NATS a running recommender keeps its own.
    durable = f"{DURABLE}-t{secrets.token_hex(4)}"
    recommender = recommender_definition(durable)
    consumers = [("TIPS_EVENTS", durable)]
    async with (
        left_as_found(nats_url, STREAMS, consumers),
        _rig(settings, database_url, models, recommender, recommender_settings) as rig,
    ):
        rig.durable = durable
        yield rig


@contextlib.asynccontextmanager
async def _rig(
    settings: Settings,
    database_url: str,
    models: Path,
    recommender: Any,
    recommender_settings: dict[str, Any],
) -> AsyncIterator[Rig]:
    await migrate(settings, [EVENTS, recommender])
    bus = await Bus.connect(settings, "rig-profile")
    await bus.ensure_streams(
        streams_for(
            profile_events.ProfileChanged,
            profile_events.ConsentChanged,
            profile_events.UserDeleted,
        )
    )
    events_server = ServiceServer(
        EVENTS,
        # No profile service here; the consent gate has its own test (test_events_consent.py).
        EventsSettings(
            **settings.model_copy(update={"log_format": "text"}).model_dump(),
            events_consent_gate=False,
        ),
        port=0,
    )
    await events_server.start()
    rec_settings = RecommenderSettings(
        **{**settings.model_dump(), "events_addr": events_server.address, "log_format": "text"},
        recommender_model_repository=str(models),
        **recommender_settings,
    )
    rec_server = ServiceServer(recommender, rec_settings, port=0)
    db = await asyncpg.connect(database_url)
    try:
        await rec_server.start()
        yield Rig(events_server, rec_server, db, bus)
    finally:
        await rec_server.stop(grace=0)
        await events_server.stop(grace=0)
        await close_channels()
        await db.close()
        await bus.close()
