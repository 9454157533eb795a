"""Settings of the notifier service (``TIPS_NOTIFIER_*``), on top of the mesh's.

Push tokens are sealed under a key ring of key-encryption keys (key id to a
base64 32-byte key, JSON in the environment) plus the id new records use.
Push goes through FCM HTTP v1 for every platform (APNs via FCM for iOS);
its OAuth token comes from a Google service-account key (JSON). Email goes
to an SMTP relay. See docs/notifier.md.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from kernel.crypto import CryptoError, KeyRing, decode_key
from kernel.settings import Settings, SettingsError


class NotifierSettings(Settings):
    """The mesh's settings plus the notifier's own knobs."""

    # --- push token vault -------------------------------------------------------
    notifier_kek_ring: dict[str, SecretStr] = Field(default_factory=dict)
    notifier_kek_current: str = Field(default="", pattern=r"^[A-Za-z0-9._-]{0,64}$")

    # --- policy -------------------------------------------------------------------
    # Same dedupe key to the same user within this window: DUPLICATE.
    notifier_dedupe_window_seconds: int = Field(default=86400, ge=0, le=30 * 86400)
    # Notifications per user per local day when the profile sets no cap.
    notifier_daily_cap: int = Field(default=5, ge=1, le=50)
    # "defer": a notification due in quiet hours waits for the window's end
    # (suppressed QUIET_HOURS if it expires first); "suppress": suppressed at once.
    notifier_quiet_hours_mode: Literal["defer", "suppress"] = "defer"
    notifier_profile_timeout_seconds: float = Field(default=2.0, gt=0, le=60)

    # --- delivery worker --------------------------------------------------------
    notifier_worker_enabled: bool = True
    notifier_worker_poll_seconds: float = Field(default=1.0, gt=0, le=300)
    notifier_worker_batch: int = Field(default=20, ge=1, le=500)
    # A claimed notification not finished within this is claimable again (crash).
    notifier_worker_lease_seconds: float = Field(default=60.0, ge=1, le=3600)
    notifier_max_attempts: int = Field(default=6, ge=1, le=50)
    notifier_backoff_base_seconds: float = Field(default=2.0, gt=0, le=3600)
    notifier_backoff_max_seconds: float = Field(default=600.0, gt=0, le=86400)

    # --- FCM HTTP v1 ------------------------------------------------------------
    notifier_fcm_base_url: str = "https://fcm.googleapis.com"
    notifier_fcm_project_id: str = ""
    # A Google service-account key file's JSON (client_email, private_key, token_uri).
    notifier_fcm_credentials: SecretStr = SecretStr("")
    # Overrides the key's token_uri (tests, proxies); empty: the key's own.
    notifier_fcm_token_url: str = ""
    notifier_http_timeout_seconds: float = Field(default=10.0, gt=0, le=120)

    # --- SMTP ---------------------------------------------------------------------
    notifier_smtp_host: str = ""
    notifier_smtp_port: int = Field(default=587, ge=1, le=65535)
    notifier_smtp_security: Literal["none", "starttls", "tls"] = "starttls"
    notifier_smtp_username: str = ""
    notifier_smtp_password: SecretStr = SecretStr("")
    notifier_smtp_from: str = "Tips <tips@localhost>"
    notifier_smtp_timeout_seconds: float = Field(default=15.0, gt=0, le=120)

    # --- bus ------------------------------------------------------------------------
    notifier_erasure_durable: str = Field(
        default="notifier-erasure", pattern=r"^[A-Za-z0-9_-]{1,64}$"
    )
    # ProfileChanged (digest or time zone changed): held tips move to the new digest time.
    notifier_profile_durable: str = Field(
        default="notifier-profiles", pattern=r"^[A-Za-z0-9_-]{1,64}$"
    )

    def key_ring(self) -> KeyRing:
        """The push-token key ring; SettingsError naming the bad variable."""
        ring: dict[str, bytes] = {}
        for key_id, secret in self.notifier_kek_ring.items():
            try:
                ring[key_id] = decode_key(secret.get_secret_value())
            except CryptoError as exc:
                raise SettingsError(
                    f"invalid configuration: TIPS_NOTIFIER_KEK_RING[{key_id!r}]: {exc}"
                ) from None
        if not ring:
            raise SettingsError(
                "invalid configuration: TIPS_NOTIFIER_KEK_RING: at least one key is needed"
            )
        current = self.notifier_kek_current or (next(iter(ring)) if len(ring) == 1 else "")
        try:
            return KeyRing(ring, current)
        except CryptoError as exc:
            raise SettingsError(
                f"invalid configuration: TIPS_NOTIFIER_KEK_CURRENT: {exc}"
            ) from None


def notifier_settings(settings: Settings) -> NotifierSettings:
    """``settings`` as NotifierSettings (the notifier fields read from the environment)."""
    if isinstance(settings, NotifierSettings):
        return settings
    try:
        return NotifierSettings(**settings.model_dump())
    except Exception as exc:  # pydantic ValidationError: one readable line
        raise SettingsError(f"invalid notifier configuration: {exc}") from None
