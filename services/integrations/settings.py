"""Settings of the integrations service (``TIPS_INTEGRATIONS_*``), on top of the mesh's.

Provider OAuth clients come from ``integrations_providers``, a JSON map of
provider id to ``ProviderClientSettings``; a provider without an entry (or
without a client id) is listed as unavailable. Endpoint URLs default to the
provider's documented ones (in its connector module) and are overridden here
only to point tests at local stand-ins or a proxy; one that is not https is
a local stand-in (``tipsmesh.devproviders``) and refused unless ``dev_mode``.

The token vault's key-encryption keys (KEKs) are a key ring: key id to a
base64 32-byte key, plus the id of the key new records are wrapped under.
"""

from __future__ import annotations

import base64
import binascii

from pydantic import BaseModel, Field, SecretStr, model_validator

from kernel.settings import Settings, SettingsError


class ProviderClientSettings(BaseModel):
    """This deployment's OAuth client at one provider, and endpoint overrides."""

    client_id: str = ""
    client_secret: SecretStr = SecretStr("")
    # Empty means the connector's documented default.
    authorize_url: str = ""
    token_url: str = ""
    api_base_url: str = ""
    revoke_url: str = ""
    # Connections syncing at once per replica (a provider rate-limits per app).
    max_concurrency: int = Field(default=4, ge=1, le=100)


class IntegrationsSettings(Settings):
    """Everything the integrations service reads beyond the shared settings."""

    # --- providers -----------------------------------------------------------
    integrations_providers: dict[str, ProviderClientSettings] = Field(default_factory=dict)
    # The service's OAuth redirect URI registered at every provider: the
    # gateway's `GET /v1/connections:callback`.
    integrations_redirect_uri: str = "http://127.0.0.1:8080/v1/connections:callback"
    # Where browsers may be sent after the callback; the first is the default.
    integrations_return_uris: list[str] = Field(
        default_factory=lambda: ["tips://connections/callback"]
    )
    # How long a started authorization (state, PKCE verifier) is accepted.
    integrations_state_ttl_seconds: int = Field(default=600, ge=30, le=3600)
    integrations_http_timeout_seconds: float = Field(default=15.0, gt=0, le=120)
    # Refresh an access token this long before it expires.
    integrations_token_refresh_margin_seconds: int = Field(default=120, ge=0, le=3600)

    # --- token vault ----------------------------------------------------------
    # Key id -> base64 (standard or url-safe) 32-byte AES-256 key; JSON in the env.
    integrations_kek_ring: dict[str, SecretStr] = Field(default_factory=dict)
    # The key new and rewrapped records are wrapped under; must be in the ring.
    integrations_kek_current: str = Field(default="", pattern=r"^[A-Za-z0-9._-]{0,64}$")

    # --- scheduling -----------------------------------------------------------
    integrations_scheduler_enabled: bool = True
    # How often each replica looks for due connections (on-demand syncs wake it at once).
    integrations_scheduler_poll_seconds: float = Field(default=5.0, gt=0, le=300)
    # A claimed sync not finished within this is considered dead and claimable again.
    integrations_sync_lease_seconds: int = Field(default=600, ge=10, le=86400)
    # Scheduled runs move by up to this fraction of the interval, so users
    # connected at the same moment do not hit the provider together.
    integrations_sync_jitter: float = Field(default=0.1, ge=0, le=0.5)
    integrations_backoff_base_seconds: float = Field(default=30.0, gt=0, le=3600)
    integrations_backoff_max_seconds: float = Field(default=6 * 3600.0, gt=0, le=7 * 86400)
    # Failed runs after which a connection shows as ERROR (it keeps retrying).
    integrations_error_after_failures: int = Field(default=3, ge=1, le=100)
    # Records per provider page and signals per ingest call.
    integrations_page_size: int = Field(default=250, ge=1, le=2500)
    integrations_ingest_batch: int = Field(default=500, ge=1, le=500)
    # How far back the first sync (and a full resync) reaches.
    integrations_backfill_days: int = Field(default=30, ge=1, le=730)
    # Per-run cap on provider pages, so one huge account cannot hog a worker.
    integrations_max_pages_per_run: int = Field(default=200, ge=1, le=100000)

    # --- consent and events -----------------------------------------------------
    # Granted purposes are cached this long; ConsentChanged evicts at once.
    integrations_consent_cache_seconds: float = Field(default=30.0, ge=0, le=3600)
    integrations_consent_durable: str = "integrations-consent"

    @model_validator(mode="after")
    def _provider_urls_are_https_unless_dev(self) -> IntegrationsSettings:
        # A plain-http endpoint is a local stand-in (tipsmesh.devproviders): development only.
        for provider, client in self.integrations_providers.items():
            for name in ("authorize_url", "token_url", "api_base_url", "revoke_url"):
                url = getattr(client, name)
                if url and not url.startswith("https://") and not self.dev_mode:
                    raise ValueError(
                        f"TIPS_INTEGRATIONS_PROVIDERS[{provider!r}].{name}={url!r} is not https: "
                        "a local provider is for development only "
                        "(set TIPS_DEV_MODE=1, as `tips up` does)"
                    )
        return self

    def provider_client(self, provider_id: str) -> ProviderClientSettings:
        return self.integrations_providers.get(provider_id) or ProviderClientSettings()

    def kek_ring(self) -> dict[str, bytes]:
        """The key ring decoded; SettingsError naming the bad key id."""
        ring: dict[str, bytes] = {}
        for key_id, secret in self.integrations_kek_ring.items():
            raw = secret.get_secret_value().strip()
            try:
                key = base64.urlsafe_b64decode(
                    raw.replace("+", "-").replace("/", "_") + "=" * (-len(raw) % 4)
                )
            except (binascii.Error, ValueError):
                key = b""
            if len(key) != 32:
                raise SettingsError(
                    f"invalid configuration: TIPS_INTEGRATIONS_KEK_RING[{key_id!r}]: "
                    "must be a base64 32-byte key"
                )
            ring[key_id] = key
        return ring


def load_integrations_settings(base: Settings) -> IntegrationsSettings:
    """IntegrationsSettings from the environment, over the values of ``base``."""
    if isinstance(base, IntegrationsSettings):
        return base
    try:
        return IntegrationsSettings(**base.model_dump())
    except Exception as exc:  # pydantic ValidationError: one readable line
        raise SettingsError(f"invalid integrations configuration: {exc}") from None


__all__ = ["IntegrationsSettings", "ProviderClientSettings", "load_integrations_settings"]
