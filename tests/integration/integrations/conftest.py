"""The ``stack`` fixture: one integrations stack per test module (its own stand-in account)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from kernel.settings import Settings
from tests.support.integrations_stack import Stack, integrations_stack


@pytest.fixture(scope="module")
async def stack(settings: Settings, nats_url: str, database_url: str) -> AsyncIterator[Stack]:
    async with integrations_stack(settings, nats_url, database_url) as running:
        yield running
