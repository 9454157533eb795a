"""Typed settings from the environment (``TIPS_*``), validated at start.

One settings class for every process keeps names the same across the mesh;
a service reads only what it needs. ``load_settings`` turns a validation
error into one clear message naming each bad variable.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_core import to_jsonable_python
from pydantic_settings import BaseSettings, SettingsConfigDict

# Default gRPC port of each service; the gateway listens on HTTP.
DEFAULT_PORTS: dict[str, int] = {
    "auth": 50051,
    "profile": 50052,
    "integrations": 50053,
    "events": 50054,
    "recommender": 50055,
    # 50056 was ml_serving's (removed: docs/decisions.md 37); not reused.
    "ml_pipelines": 50057,
    "notifier": 50058,
}
GATEWAY_DEFAULT_PORT = 8080
SERVICE_NAMES: tuple[str, ...] = tuple(DEFAULT_PORTS)


class SettingsError(RuntimeError):
    """Raised when the environment does not describe a valid configuration."""


class Settings(BaseSettings):
    """Everything a Tips mesh process can be configured with."""

    model_config = SettingsConfigDict(env_prefix="TIPS_", extra="ignore", frozen=True)

    # Which service this process runs (set by `tips serve NAME`).
    service: str = ""
    host: str = "127.0.0.1"
    # 0 means "the service's default port" (DEFAULT_PORTS).
    port: int = Field(default=0, ge=0, le=65535)

    # The PostgreSQL server, as an admin/owner URL (migrations create roles and
    # schemas with it). Services connect as their own role, derived from it
    # unless service_database_url names the URL to use.
    database_url: str = "postgresql://postgres@127.0.0.1:5432/tips"
    service_database_url: str | None = None
    # Password given to each service role by `tips migrate`, and used when a
    # service derives its URL: one per role in db_role_passwords (service ->
    # password; `tips migrate` needs all of them, a service only its own),
    # db_role_password for any role not listed. Empty: a login without password.
    db_role_password: str = ""
    db_role_passwords: dict[str, SecretStr] = Field(default_factory=dict)
    db_pool_size: int = Field(default=5, ge=1, le=100)
    # Service roles are named <prefix><service>. Tests against a shared server
    # use a unique prefix so they can drop exactly the roles they created.
    db_role_prefix: str = Field(default="tips_", pattern=r"^[a-z][a-z0-9_]*$", max_length=40)

    nats_url: str = "nats://127.0.0.1:4222"
    # This process's NATS user (empty: connect without credentials). Each
    # service has its own, allowed to publish its own events only
    # (kernel/bus_permissions.py).
    nats_user: str = ""
    nats_password: SecretStr = SecretStr("")
    # Replicas of the JetStream streams a service declares (kernel.bus.ensure_streams):
    # 3 on a 3-node cluster, so losing a node loses no message and stops no stream.
    nats_stream_replicas: int = Field(default=1, ge=1, le=5)

    # Mutual TLS between mesh processes (kernel/tls.py): the mesh CA, and this
    # process's certificate (its name is the certificate's DNS SAN) and key.
    # Required unless insecure, which allows plaintext (development only).
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    insecure: bool = False
    # A development mesh (`tips up`): local stand-ins (the identity providers
    # of tipsmesh.devidp) are accepted. Never set in production.
    dev_mode: bool = False

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"

    # OpenTelemetry: off by default; "console" prints spans, "otlp" exports
    # spans and metrics to otel_endpoint (a collector's OTLP/gRPC port).
    otel_exporter: Literal["none", "console", "otlp"] = "none"
    otel_endpoint: str = "http://127.0.0.1:4317"
    # Metrics (kernel/metrics.py): pushed over OTLP this often when otel_exporter
    # is "otlp"; served in Prometheus' text format at http://host:metrics_port/metrics
    # when metrics_port is set (0: no endpoint, the default, so processes on one
    # machine never collide). Neither: no metric is recorded.
    metrics_export_seconds: float = Field(default=15.0, gt=0, le=3600)
    metrics_port: int = Field(default=0, ge=0, le=65535)

    # Seconds in-flight RPCs get to finish after SIGTERM.
    drain_seconds: float = Field(default=5.0, ge=0, le=300)
    # Deadline for downstream calls when the inbound call has none.
    default_deadline_seconds: float = Field(default=10.0, gt=0, le=600)
    # How long start-up may retry reaching PostgreSQL/NATS (and build) before
    # the process exits non-zero instead of hanging.
    startup_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    # Health follows the dependencies (kernel/dependency_health.py): PostgreSQL
    # and NATS probed this often, a probe given this long before it counts as down.
    health_probe_seconds: float = Field(default=1.0, gt=0, le=60)
    health_probe_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    # How long idempotent database work retries a database that went away
    # (Database.retrying), within the RPC's deadline, before UNAVAILABLE.
    db_retry_seconds: float = Field(default=4.0, ge=0, le=60)

    # Where the other services listen (host:port).
    auth_addr: str = f"127.0.0.1:{DEFAULT_PORTS['auth']}"
    profile_addr: str = f"127.0.0.1:{DEFAULT_PORTS['profile']}"
    integrations_addr: str = f"127.0.0.1:{DEFAULT_PORTS['integrations']}"
    events_addr: str = f"127.0.0.1:{DEFAULT_PORTS['events']}"
    recommender_addr: str = f"127.0.0.1:{DEFAULT_PORTS['recommender']}"
    ml_pipelines_addr: str = f"127.0.0.1:{DEFAULT_PORTS['ml_pipelines']}"
    notifier_addr: str = f"127.0.0.1:{DEFAULT_PORTS['notifier']}"

    gateway_port: int = Field(default=GATEWAY_DEFAULT_PORT, ge=0, le=65535)
    # The built web app (web/dist, `make web`) the edge serves at /app/; empty
    # serves none (gateway/webapp.py).
    gateway_web_dir: str = ""

    # Access tokens the edge accepts (gateway.auth): their `iss` and `aud`.
    auth_issuer: str = "https://auth.tips.local"
    auth_audience: str = "tips-api"
    # Where the edge gets the JWK Set: this URL when set, else the auth
    # service's GetJwks over gRPC.
    jwks_url: str | None = None
    # How long a fetched JWK Set is used before it is fetched again.
    jwks_cache_seconds: float = Field(default=300.0, gt=0, le=86400)
    # At most one fetch per this interval, so a flood of unknown `kid`s
    # cannot hammer the auth service.
    jwks_min_refresh_seconds: float = Field(default=5.0, ge=0, le=3600)
    jwks_fetch_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    # Clock skew tolerated on `exp`, `nbf` and `iat`.
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=300)
    # Lifetime of the access tokens the auth service issues. The edge keeps a
    # revoked session refused this long (+ leeway) after the revocation
    # (gateway.revocations). Same variable as the auth service's.
    auth_access_token_ttl_seconds: int = Field(default=600, ge=30, le=86400)

    def grpc_port(self) -> int:
        """The port this service listens on."""
        if self.port:
            return self.port
        return DEFAULT_PORTS[self.service]

    def to_json_with_secrets(self) -> str:
        """The settings as JSON with secrets in clear, for a child process's stdin only.

        ``model_dump_json`` masks ``SecretStr`` values (right for logs, wrong
        for handing the settings to a process that must log in with them).
        """

        def reveal(value: object) -> object:
            if isinstance(value, SecretStr):
                return value.get_secret_value()
            return to_jsonable_python(value)

        return json.dumps(self.model_dump(mode="python"), default=reveal)

    def addr_of(self, service: str) -> str:
        """host:port of another service."""
        value = getattr(self, f"{service}_addr", None)
        if not isinstance(value, str):
            raise SettingsError(f"unknown service {service!r}")
        return value


def _checkout() -> Path | None:
    """The checkout this code runs from, or None (an installed package)."""
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and (root / "models").is_dir():
        return root
    return None


def _user_state() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "tips-mesh"


def default_model_repository() -> str:
    """Where a service keeps models when no setting names a repository: the
    checkout's ``models/`` (committed, seeded) when it runs from one, else a
    per-user state directory (an installed package's directory is not writable)."""
    root = _checkout()
    return str(root / "models" if root is not None else _user_state() / "models")


def default_state_dir(name: str) -> str:
    """Where a service keeps state of its own (``name``) when no setting says: the
    checkout's git-ignored ``.run/<name>`` (``tips up``'s default run dir) when it
    runs from one, else ``$XDG_STATE_HOME/tips-mesh/<name>``."""
    root = _checkout()
    return str(root / ".run" / name if root is not None else _user_state() / name)


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment, failing with one clear message."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"TIPS_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise SettingsError(f"invalid configuration: {problems}") from None
    if settings.service and settings.service not in DEFAULT_PORTS:
        raise SettingsError(
            f"invalid configuration: TIPS_SERVICE: unknown service {settings.service!r}; "
            f"expected one of {', '.join(SERVICE_NAMES)}"
        )
    return settings


def variables_of(*classes: type[BaseSettings]) -> set[str]:
    """The ``TIPS_*`` variables the classes read: one per field."""
    return {f"TIPS_{name.upper()}" for cls in classes for name in cls.model_fields}


def check_environment(known: Collection[str], environ: Mapping[str, str] | None = None) -> None:
    """SettingsError naming every ``TIPS_*`` variable that no setting reads.

    Settings ignore names they do not know, so a typo or a stale name
    (``TIPS_TRITON_URL`` for ``TIPS_RECOMMENDER_TRITON_URL``) would silently
    leave the default in force.
    """
    env = os.environ if environ is None else environ
    unknown = sorted(name for name in env if name.startswith("TIPS_") and name not in known)
    if not unknown:
        return
    named = []
    for name in unknown:
        # A service's own setting under its prefix (TIPS_TRITON_URL for
        # TIPS_RECOMMENDER_TRITON_URL), else the nearest spellings.
        prefixed = sorted(k for k in known if k.endswith("_" + name.removeprefix("TIPS_")))
        close = prefixed or difflib.get_close_matches(name, known, n=2, cutoff=0.7)
        named.append(f"{name} (did you mean {' or '.join(close)}?)" if close else name)
    raise SettingsError(
        f"invalid configuration: no setting reads {', '.join(named)}; "
        "remove or rename them (the settings classes, kernel/settings.py and "
        "services/*/settings.py, name every one)"
    )
