"""A local mesh as `tips up` leaves it: where each service listens, and its certificates.

`tips up` writes ``mesh.json`` into its run dir (``.run/`` of the checkout, or
``--run-dir`` / ``TIPS_RUN_DIR``) while it runs: the ports of every service
and of the gateway, and ``tls_dir``, where it issued a development CA and a
certificate per process (``ca.pem``, ``<name>.pem``, ``<name>.key``;
``operator`` is the identity of tools, ``gateway`` the one public RPCs accept).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tipsclient.errors import ClientConfigError
from tipsclient.tls import StrPath

RUN_DIR_ENV = "TIPS_RUN_DIR"
STATE_FILE = "mesh.json"
# Every process of `tips up` listens on loopback.
HOST = "127.0.0.1"
# In mesh.json's ports, but the REST/JSON edge (HTTP), not a gRPC service.
GATEWAY = "gateway"


@dataclass(frozen=True)
class Identity:
    """The files of one process's development identity (not checked until read)."""

    name: str
    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class RunDir:
    """What a running `tips up` recorded in its run dir."""

    path: Path
    ports: Mapping[str, int]
    tls_dir: Path

    @property
    def services(self) -> tuple[str, ...]:
        """The gRPC services of this mesh, sorted."""
        return tuple(sorted(name for name in self.ports if name != GATEWAY))

    def address_of(self, service: str) -> str:
        """host:port of ``service``; ClientConfigError naming the services there are."""
        if service == GATEWAY:
            raise ClientConfigError(
                f"{service!r} is the mesh's REST/JSON edge (http://{HOST}:{self.ports[GATEWAY]}), "
                f"not a gRPC service; the gRPC services are: {', '.join(self.services)}"
            )
        if service not in self.ports:
            raise ClientConfigError(
                f"unknown service {service!r}: the mesh in {self.path} runs "
                f"{', '.join(self.services) or 'no gRPC service'}"
            )
        return f"{HOST}:{self.ports[service]}"

    def identity(self, name: str) -> Identity:
        """The development certificate and key `tips up` issued to ``name``."""
        return Identity(
            name=name,
            ca_file=self.tls_dir / "ca.pem",
            cert_file=self.tls_dir / f"{name}.pem",
            key_file=self.tls_dir / f"{name}.key",
        )


def load(path: StrPath) -> RunDir:
    """The run dir at ``path``; ClientConfigError when no mesh runs from it."""
    run_dir = Path(path)
    state_file = run_dir / STATE_FILE
    try:
        state = json.loads(state_file.read_text())
    except FileNotFoundError:
        raise ClientConfigError(
            f"no running mesh in {run_dir}: {state_file} does not exist (`make up` or "
            "`tips up` writes it while the mesh runs)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ClientConfigError(f"cannot read {state_file}: {exc}") from None
    ports = state.get("ports") if isinstance(state, dict) else None
    if not isinstance(ports, dict):
        raise ClientConfigError(f"{state_file} has no ports: is it from `tips up`?")
    tls_dir = Path(state.get("tls_dir") or run_dir / "tls")
    return RunDir(path=run_dir, ports={str(k): int(v) for k, v in ports.items()}, tls_dir=tls_dir)


def find(path: StrPath | None = None, *, start: StrPath | None = None) -> RunDir:
    """The run dir: ``path``, else ``$TIPS_RUN_DIR``, else the first ``.run`` with a
    ``mesh.json`` in ``start`` (the working directory) or one of its parents."""
    if path is not None:
        return load(path)
    explicit = os.environ.get(RUN_DIR_ENV)
    if explicit:
        return load(explicit)
    here = Path(start or Path.cwd()).resolve()
    looked = [directory / ".run" for directory in (here, *here.parents)]
    for run_dir in looked:
        if (run_dir / STATE_FILE).is_file():
            return load(run_dir)
    raise ClientConfigError(
        f"no running mesh found: no .run/{STATE_FILE} in {here} or its parents. Start one "
        f"(`make up`), pass run_dir= or set {RUN_DIR_ENV}, or give address= and ca=, cert=, "
        "key= explicitly"
    )
