"""What a connector is: provider facts, an incremental fetch, a normaliser.

A connector module defines one ``Connector`` subclass and exposes an instance
as ``CONNECTOR``; ``services.integrations.connectors.registry`` finds it. The
framework owns everything else: OAuth, the token vault, retries, rate limits,
cursors, ingest and scheduling. See docs/connectors.md.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar

from tips.events.v1 import signal_pb2

Cursor = dict[str, Any]


class MalformedRecord(ValueError):
    """A provider record that cannot become a signal; skipped and counted."""


@dataclass(frozen=True)
class Endpoints:
    """Where the provider's OAuth server and API are."""

    authorize_url: str
    token_url: str
    api_base_url: str
    revoke_url: str = ""


@dataclass(frozen=True)
class FetchContext:
    """What a fetch needs to know besides the cursor."""

    connection: str  # users/{user}/connections/{connection}
    now: datetime
    page_size: int
    backfill: timedelta


@dataclass
class Page:
    """One provider page, normalised; committed with the cursor after it."""

    signals: list[signal_pb2.Signal] = field(default_factory=list)
    records: int = 0
    skipped: int = 0
    # Where the next fetch resumes once this page is ingested.
    cursor: Cursor = field(default_factory=dict)


class Connector(ABC):
    """One provider. Subclasses set the class attributes and implement ``fetch``."""

    id: ClassVar[str]
    display_name: ClassVar[str]
    description: ClassVar[str]
    signal_kinds: ClassVar[tuple[int, ...]]
    # The profile consent purpose covering its signals, e.g. "calendar-data-for-tips".
    consent_purpose: ClassVar[str]
    scopes: ClassVar[tuple[str, ...]]
    endpoints: ClassVar[Endpoints]
    # Extra query parameters of the authorization URL (e.g. offline access).
    authorize_params: ClassVar[Mapping[str, str]] = {}
    default_sync_interval: ClassVar[timedelta] = timedelta(minutes=30)
    min_sync_interval: ClassVar[timedelta] = timedelta(minutes=5)
    icon_uri: ClassVar[str] = ""

    def resync_cursor(self, cursor: Cursor) -> Cursor:
        """The cursor a full resync starts from: empty unless the connector must
        remember what it already sent (e.g. daily totals sent as increases)."""
        return {}

    @abstractmethod
    def fetch(self, api: Any, cursor: Cursor, ctx: FetchContext) -> AsyncIterator[Page]:
        """Pages of new records from ``cursor`` on (``api`` is a ``ProviderApi``).

        Each page carries the cursor to resume from after it. Malformed
        records are skipped and counted in ``Page.skipped``, never raised.
        """
