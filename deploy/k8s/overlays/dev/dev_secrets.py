"""Development secrets for the dev overlay: writes the files its secretGenerator reads.

    .venv/bin/python deploy/k8s/overlays/dev/dev_secrets.py [DIR]

DIR (default: ``secrets/`` beside this file, ignored by git) gets:

- ``tls/``: the development mesh CA and one certificate and key per process
  (``tips certs``: ``tipsmesh.devcerts``); ``ca.key`` stays here, only
  ``ca.pem`` goes into the cluster;
- ``db.env``: the PostgreSQL superuser's password, the admin URL ``tips
  migrate`` uses, every service role's password as ``TIPS_DB_ROLE_PASSWORDS``
  JSON (migrate) and one ``role-<service>`` key per service (the service);
- ``keys.env``: the key-encryption keys of auth, integrations and notifier.

Files that exist are kept, so re-running never changes a password or a key
that a running cluster's data depends on (certificates are reissued only when
missing, expired or not signed by the CA). Production creates the same
Secrets from its own CA and secret store (docs/operations.md).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from kernel.access import GATEWAY, OPERATOR
from kernel.settings import SERVICE_NAMES
from tipsmesh.devcerts import ensure_mesh_certs
from tipsmesh.devsecrets import GENERATED, ROLE_PASSWORDS, SUPERUSER

HERE = Path(__file__).resolve().parent


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def db_env() -> str:
    superuser = GENERATED[SUPERUSER]()
    roles: dict[str, str] = json.loads(GENERATED[ROLE_PASSWORDS]())
    lines = {
        "postgres-password": superuser,
        "admin-url": f"postgresql://postgres:{superuser}@postgres:5432/tips",
        "role-passwords": json.dumps(roles, separators=(",", ":")),
        **{f"role-{service}": password for service, password in roles.items()},
    }
    return "".join(f"{key}={value}\n" for key, value in lines.items())


def keys_env() -> str:
    lines = {
        "auth-key-encryption-key": "TIPS_AUTH_KEY_ENCRYPTION_KEY",
        "integrations-kek-ring": "TIPS_INTEGRATIONS_KEK_RING",
        "integrations-kek-current": "TIPS_INTEGRATIONS_KEK_CURRENT",
        "notifier-kek-ring": "TIPS_NOTIFIER_KEK_RING",
        "notifier-kek-current": "TIPS_NOTIFIER_KEK_CURRENT",
    }
    return "".join(f"{key}={GENERATED[variable]()}\n" for key, variable in lines.items())


def main(argv: list[str]) -> int:
    directory = Path(argv[1]) if len(argv) > 1 else HERE / "secrets"
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    ensure_mesh_certs(directory / "tls", [*SERVICE_NAMES, GATEWAY, OPERATOR])
    for name, make in (("db.env", db_env), ("keys.env", keys_env)):
        if not (directory / name).exists():
            _write_private(directory / name, make())
    print(f"dev secrets in {directory}: tls/, db.env, keys.env")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
