"""Secrets for a local mesh: generated once per run dir, kept in a 0600 file.

Services refuse to start without their key-encryption keys (no built-in
development key to leak into production). `tips up` fills the ones the
caller's environment does not set from ``<run dir>/secrets.env``, created on
first use, so data encrypted by one run is readable by the next: the KEKs,
one PostgreSQL password per service role (``TIPS_DB_ROLE_PASSWORDS``) and the
local server's superuser password (``LOCAL_POSTGRES_PASSWORD``), the local
NATS users' passwords (``LOCAL_NATS_PASSWORDS``) and the OAuth client secret
of the development data providers (``LOCAL_DEV_PROVIDERS_SECRET``,
``tipsmesh.devproviders``), which only `tips up` itself reads.
``for_process`` gives each process only its own.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path

from kernel.settings import SERVICE_NAMES


def _key32() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def _password() -> str:
    return secrets.token_urlsafe(24)


def _role_passwords() -> str:
    return json.dumps({service: _password() for service in SERVICE_NAMES})


def _nats_passwords() -> str:
    return json.dumps({name: _password() for name in (*SERVICE_NAMES, "gateway")})


# The local PostgreSQL's superuser: in the file, never in a process's environment.
SUPERUSER = "LOCAL_POSTGRES_PASSWORD"
# The local NATS's users (one per process): in the file; each process gets its own.
NATS_PASSWORDS = "LOCAL_NATS_PASSWORDS"
# The development data providers' OAuth client secret: `tips up` gives it to
# the stand-in and, inside TIPS_INTEGRATIONS_PROVIDERS, to integrations only.
DEV_PROVIDERS_SECRET = "LOCAL_DEV_PROVIDERS_SECRET"
ROLE_PASSWORDS = "TIPS_DB_ROLE_PASSWORDS"
LOCAL_ONLY = (SUPERUSER, NATS_PASSWORDS, DEV_PROVIDERS_SECRET)
# Variable -> how to make a fresh value.
GENERATED: dict[str, Callable[[], str]] = {
    SUPERUSER: _password,
    NATS_PASSWORDS: _nats_passwords,
    DEV_PROVIDERS_SECRET: _password,
    ROLE_PASSWORDS: _role_passwords,
    "TIPS_AUTH_KEY_ENCRYPTION_KEY": _key32,
    "TIPS_INTEGRATIONS_KEK_RING": lambda: json.dumps({"local-1": _key32()}),
    "TIPS_INTEGRATIONS_KEK_CURRENT": lambda: "local-1",
    "TIPS_NOTIFIER_KEK_RING": lambda: json.dumps({"local-1": _key32()}),
    "TIPS_NOTIFIER_KEK_CURRENT": lambda: "local-1",
}
# A ring and its current id are set together or not at all.
RINGS = ("TIPS_INTEGRATIONS_KEK", "TIPS_NOTIFIER_KEK")


def load_or_create(path: Path) -> dict[str, str]:
    """The run dir's secrets, creating (0600) any that are missing."""
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep and name in GENERATED:
                values[name] = value
    missing = {name: make() for name, make in GENERATED.items() if name not in values}
    if missing:
        values.update(missing)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.writelines(f"{name}={value}\n" for name, value in values.items())
    return values


def fill(env: dict[str, str], path: Path) -> None:
    """Set every generated secret the environment does not already set."""
    defaults: Mapping[str, str] = load_or_create(path)
    for ring in RINGS:
        if f"{ring}_RING" in env:
            defaults = {k: v for k, v in defaults.items() if not k.startswith(ring)}
    for name, value in defaults.items():
        if name not in LOCAL_ONLY:
            env.setdefault(name, value)


def superuser_password(path: Path) -> str:
    return load_or_create(path)[SUPERUSER]


def nats_passwords(path: Path) -> dict[str, str]:
    """Process name -> its password on the local NATS."""
    found: dict[str, str] = json.loads(load_or_create(path)[NATS_PASSWORDS])
    return found


def dev_providers_secret(path: Path) -> str:
    return load_or_create(path)[DEV_PROVIDERS_SECRET]


def for_process(env: dict[str, str], name: str | None) -> dict[str, str]:
    """``env`` (filled) narrowed to what process ``name`` needs.

    ``None`` is ``tips migrate``: everything, the admin URL's password and every
    role's. A service keeps its own role password and its own ``TIPS_<NAME>_*``
    secrets, the admin URL without its password (it logs in as its role); the
    gateway keeps no database secret at all.
    """
    if name is None:
        return env
    out = {k: v for k, v in env.items() if not _foreign_secret(k, name)}
    if "TIPS_DATABASE_URL" in out:
        out["TIPS_DATABASE_URL"] = _without_password(out["TIPS_DATABASE_URL"])
    roles = json.loads(env.get(ROLE_PASSWORDS) or "{}")
    if name in roles:
        out[ROLE_PASSWORDS] = json.dumps({name: roles[name]})
    else:
        out.pop(ROLE_PASSWORDS, None)
    return out


def _foreign_secret(variable: str, name: str) -> bool:
    """A generated KEK variable of another service."""
    if variable not in GENERATED or variable in (*LOCAL_ONLY, ROLE_PASSWORDS):
        return False
    return not variable.startswith(f"TIPS_{name.upper()}_")


def _without_password(url: str) -> str:
    parsed = urllib.parse.urlsplit(url)
    if parsed.password is None:
        return url
    host = parsed.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    user = urllib.parse.quote(urllib.parse.unquote(parsed.username or ""), safe="")
    netloc = f"{user}@{host}" if user else host
    if parsed.port is not None:
        netloc += f":{parsed.port}"
    return urllib.parse.urlunsplit(parsed._replace(netloc=netloc))
