"""A real tritonserver for the Triton tests (pytriton's bundled 2.51, Python
backend, CPU), run from its own venv built by tools/triton_env.sh.

Never skips: a venv that cannot be built or a server that does not become
ready fails the test with the log's tail.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tipsmesh.localinfra import free_port

ROOT = Path(__file__).resolve().parents[3]
BUILD_TIMEOUT_S = 600  # from scratch ~25 s here (a 55 MB wheel + onnxruntime)
READY_TIMEOUT_S = 60  # ready in ~2 s on this machine


@dataclass
class Triton:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, n: int = 40) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(lines[-n:])

    def stop(self) -> None:
        """SIGTERM (a background server ignores SIGINT), SIGKILL after 30 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session")
def triton_venv() -> Path:
    try:
        out = subprocess.run(
            ["bash", str(ROOT / "tools" / "triton_env.sh")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"tools/triton_env.sh did not finish in {BUILD_TIMEOUT_S} s")
    if out.returncode != 0:
        pytest.fail(f"tools/triton_env.sh failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return (ROOT / out.stdout.strip().splitlines()[-1]).resolve()


def start_triton(venv: Path, repository: Path, log: Path) -> Triton:
    server_dir = next((venv / "lib").glob("python3*/site-packages/pytriton/tritonserver"))
    port = free_port()
    env = {
        **os.environ,
        # The stub imports numpy/onnxruntime from the triton venv and must load
        # this interpreter's libpython, not another one on the machine.
        "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '')}",
        "LD_LIBRARY_PATH": f"{sysconfig.get_config_var('LIBDIR')}:"
        f"{os.environ.get('LD_LIBRARY_PATH', '')}",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                "./bin/tritonserver",  # its RPATH is relative: run from its folder
                f"--model-repository={repository}",
                f"--grpc-port={port}",
                "--allow-http=false",
                "--allow-metrics=false",
                f"--backend-directory={server_dir / 'backends'}",
            ],
            cwd=server_dir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    triton = Triton(f"127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"tritonserver exited ({process.returncode}):\n{triton.tail()}")
        text = log.read_text(errors="replace")
        if "Started GRPCInferenceService" in text:
            return triton
        time.sleep(0.1)
    triton.stop()
    pytest.fail(f"tritonserver not ready in {READY_TIMEOUT_S} s:\n{triton.tail()}")


@pytest.fixture
def triton_factory(triton_venv: Path, tmp_path: Path) -> Iterator[object]:
    started: list[Triton] = []

    def factory(repository: Path) -> Triton:
        triton = start_triton(triton_venv, repository, tmp_path / f"triton-{len(started)}.log")
        started.append(triton)
        return triton

    yield factory
    for triton in started:
        triton.stop()
