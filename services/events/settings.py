"""Settings of the events service (``TIPS_EVENTS_*``), on top of the mesh's.

Stream retention, ingest limits and backpressure thresholds. See
docs/durable-log.md for how they interact.
"""

from __future__ import annotations

from pydantic import Field

from kernel.settings import Settings, SettingsError


class EventsSettings(Settings):
    """Everything the events service reads beyond the shared settings."""

    # --- the TIPS_EVENTS stream --------------------------------------------------
    # Retention: whichever limit is hit first discards the oldest messages. The
    # PostgreSQL store is the long-term record; the stream is for consumers.
    events_stream_max_age_seconds: float = Field(default=7 * 24 * 3600.0, gt=0)
    events_stream_max_bytes: int = Field(default=1 << 30, gt=0)
    # JetStream drops a republished Nats-Msg-Id within this window. An outage
    # between a publish and its mark that lasts longer could duplicate a message
    # on the stream (consumers still dedupe with `claim`).
    events_stream_duplicate_window_seconds: float = Field(default=600.0, gt=0, le=86400)

    # --- ingest limits -----------------------------------------------------------
    events_max_batch: int = Field(default=500, ge=1, le=500)
    events_max_connector_batch: int = Field(default=1000, ge=1, le=1000)
    # Serialized size of one signal.
    events_max_signal_bytes: int = Field(default=4096, ge=256, le=1 << 20)

    # --- backpressure ------------------------------------------------------------
    # Ingest calls allowed in the store at once (each holds one DB connection);
    # keep it under db_pool_size so the relay and reads still get connections.
    events_ingest_max_in_flight: int = Field(default=4, ge=1, le=100)
    # How long a call waits for a slot before RESOURCE_EXHAUSTED.
    events_ingest_queue_timeout_seconds: float = Field(default=2.0, ge=0, le=60)
    # Unpublished outbox rows above which ingest answers RESOURCE_EXHAUSTED
    # (NATS down or slower than ingest): the outbox must not grow without bound.
    events_outbox_max_backlog: int = Field(default=20_000, ge=100)
    # Retry hints sent with RESOURCE_EXHAUSTED / UNAVAILABLE.
    events_retry_after_seconds: float = Field(default=1.0, gt=0, le=300)
    # How often the backlog is measured (ingest reads the last measure).
    events_backlog_check_seconds: float = Field(default=0.25, gt=0, le=60)
    # Bound on one ingest transaction (a hung store answers UNAVAILABLE).
    events_ingest_timeout_seconds: float = Field(default=10.0, gt=0, le=120)

    # --- relay -------------------------------------------------------------------
    # Outbox rows published per relay round (published concurrently, one mark).
    events_relay_batch: int = Field(default=1000, ge=1, le=10_000)
    # Run the relay in a child process (services/events/relay_process.py), so
    # ingest and publishing each get a core; False runs it in the service's loop.
    # Off by default so a process embedding the service (tests) spawns no child;
    # `tips up` and docker-compose turn it on.
    events_relay_process: bool = False

    # --- consent gate --------------------------------------------------------------
    # Reject items whose kind needs a consent the user has not granted
    # (CONSENT_REQUIRED). Only tests that run no profile service turn it off.
    events_consent_gate: bool = True
    # How long a "granted" confirmed by the profile service is trusted before the
    # ConsentChanged consumer has caught up (a ConsentChanged of the user evicts it).
    events_consent_confirm_seconds: float = Field(default=5.0, ge=0, le=300)
    # How often the in-memory consents are reloaded from the table (other
    # replicas' consumer may have applied a change this one did not see).
    events_consent_reload_seconds: float = Field(default=60.0, gt=0, le=3600)
    # Bound on one GetUserContext call to the profile service.
    events_consent_timeout_seconds: float = Field(default=2.0, gt=0, le=30)


def load_events_settings(base: Settings) -> EventsSettings:
    """EventsSettings from the environment, over the values of ``base``."""
    if isinstance(base, EventsSettings):
        return base
    try:
        return EventsSettings(**base.model_dump())
    except Exception as exc:  # pydantic ValidationError: one readable line
        raise SettingsError(f"invalid events configuration: {exc}") from None


__all__ = ["EventsSettings", "load_events_settings"]
