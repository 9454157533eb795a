"""A mesh service in its own process, as ``tips serve NAME`` runs it, for a bench.

    proc, address = start_service("events", {"TIPS_DATABASE_URL": ..., ...})

The environment is this process's plus ``env`` (``TIPS_PORT`` is chosen here);
it returns once the service answers SERVING on gRPC health, or raises with
its exit code.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def start_service(
    name: str,
    env: Mapping[str, str],
    *,
    wrapper: Sequence[str] = (),
    timeout: float = 60.0,
) -> tuple[subprocess.Popen[bytes], str]:
    """``tips serve name`` (under ``wrapper``, e.g. py-spy) and its address."""
    from tipsmesh.localinfra import free_port

    port = free_port()
    command = [*wrapper, sys.executable, "-m", "tipsmesh.cli", "serve", name]
    proc = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env, "TIPS_PORT": str(port)})
    address = f"127.0.0.1:{port}"
    try:
        wait_serving(name, address, proc, timeout)
    except BaseException:
        proc.terminate()
        proc.wait(30)
        raise
    return proc, address


def wait_serving(
    name: str, address: str, proc: subprocess.Popen[bytes], timeout: float = 60.0
) -> None:
    from tipsmesh.health import grpc_serving

    give_up = time.monotonic() + timeout
    while not asyncio.run(grpc_serving(address, deadline_s=0.5)):
        if proc.poll() is not None or time.monotonic() > give_up:
            raise RuntimeError(f"{name} service did not start (exit {proc.poll()})")
        time.sleep(0.1)
