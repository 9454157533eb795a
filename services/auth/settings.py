"""Settings of the auth service (``TIPS_AUTH_*``), on top of the mesh's.

Access tokens use the mesh-wide ``auth_issuer`` / ``auth_audience`` and
``jwt_leeway_seconds`` (kernel settings) so the gateway and auth agree.
The production identity providers are the defaults; tests point the issuer
URLs at a local OIDC issuer.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator

from kernel.settings import Settings, SettingsError, load_settings


class AuthSettings(Settings):
    """Everything the auth service reads beyond the shared settings."""

    # --- identity providers (OpenID Connect) ---------------------------------
    # Issuer URLs: the discovery document is `<issuer>/.well-known/openid-configuration`.
    auth_google_issuer: str = "https://accounts.google.com"
    auth_apple_issuer: str = "https://appleid.apple.com"
    # Accepted `aud` values of ID tokens: the app's client ids (iOS, Android, web).
    # Comma separated in the environment is NOT parsed: give a JSON list.
    auth_google_client_ids: list[str] = Field(default_factory=list)
    auth_apple_client_ids: list[str] = Field(default_factory=list)
    # The client id (and secret, if the provider wants one) of the web flow;
    # must also be listed in the client ids above. Apple's secret is the
    # client-secret JWT the operator generates from the team key.
    auth_google_web_client_id: str = ""
    auth_google_web_client_secret: SecretStr = SecretStr("")
    auth_apple_web_client_id: str = ""
    auth_apple_web_client_secret: SecretStr = SecretStr("")
    # Redirect URIs a web sign-in may return to; the first is the default.
    auth_web_redirect_uris: list[str] = Field(default_factory=list)
    # How long a started web sign-in (state, PKCE verifier, nonce) lives.
    auth_web_state_ttl_seconds: int = Field(default=600, ge=30, le=3600)
    # Provider discovery/JWKS cache and refresh guard (unknown `kid`).
    auth_provider_jwks_cache_seconds: float = Field(default=3600.0, gt=0, le=86400)
    auth_provider_jwks_min_refresh_seconds: float = Field(default=10.0, ge=0, le=3600)
    auth_provider_http_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    # Oldest `iat` accepted on a provider ID token (they live about an hour).
    auth_id_token_max_age_seconds: int = Field(default=3600, ge=60, le=86400)

    # --- tokens and sessions -------------------------------------------------
    auth_access_token_ttl_seconds: int = Field(default=600, ge=30, le=86400)
    auth_refresh_token_ttl_seconds: int = Field(default=30 * 86400, ge=300, le=400 * 86400)
    # Scopes every user access token carries (space separated).
    auth_default_scopes: str = "tips.user"
    # AES-256-GCM key-encryption key for signing keys and PKCE verifiers:
    # 32 bytes, base64url. Required: the service refuses to start without
    # one (`services.auth.crypto.generate_kek()` makes one).
    auth_key_encryption_key: SecretStr = SecretStr("")
    # Stored beside each ciphertext, so a later KEK rotation can tell them apart.
    auth_key_encryption_key_id: str = Field(default="kek-1", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    # How often a running service re-reads the signing keys (a rotation made
    # by `tips auth rotate-keys` in another process is picked up within this).
    auth_signing_key_reload_seconds: float = Field(default=30.0, gt=0, le=3600)

    # --- failed sign-in rate limit (per client address) ----------------------
    auth_signin_failure_limit: int = Field(default=10, ge=1, le=10000)
    auth_signin_failure_window_seconds: int = Field(default=300, ge=1, le=86400)

    @model_validator(mode="after")
    def _providers_are_https_unless_dev(self) -> AuthSettings:
        # A plain-http issuer is a local stand-in (tipsmesh.devidp): development only.
        for name in ("auth_google_issuer", "auth_apple_issuer"):
            url = getattr(self, name)
            if not url.startswith("https://") and not self.dev_mode:
                raise ValueError(
                    f"TIPS_{name.upper()}={url!r} is not https: a local identity provider "
                    "is for development only (set TIPS_DEV_MODE=1, as `tips up` does)"
                )
        return self

    def previous_key_grace_seconds(self) -> int:
        """Minimum time a retired signing key stays in the JWK Set."""
        return self.auth_access_token_ttl_seconds + self.jwt_leeway_seconds + 60


def load_auth_settings(base: Settings) -> AuthSettings:
    """AuthSettings from the environment, over the values of ``base``."""
    if isinstance(base, AuthSettings):
        return base
    overrides = base.model_dump()
    try:
        return AuthSettings(**overrides)
    except Exception as exc:  # pydantic ValidationError: one readable line
        raise SettingsError(f"invalid auth configuration: {exc}") from None


__all__ = ["AuthSettings", "load_auth_settings", "load_settings"]
