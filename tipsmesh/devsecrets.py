"""Secrets for a local mesh: generated once per run dir, kept in a 0600 file.

Services refuse to start without their key-encryption keys (no built-in
development key to leak into production). `tips up` fills the ones the
caller's environment does not set from ``<run dir>/secrets.env``, created on
first use, so data encrypted by one run is readable by the next.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path


def _key32() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


# Variable -> how to make a fresh value.
GENERATED: dict[str, Callable[[], str]] = {
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
        env.setdefault(name, value)
