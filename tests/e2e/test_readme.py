"""The README works verbatim: its shell blocks, in order, against a fresh `make up`.

Every ```` ```sh ```` block of README.md is run as written, in one bash
session (a variable one block sets, the next may use, as in a reader's
terminal), with ``bash -e`` so any failing command fails the test. Two lines
are the test's own business: ``make up`` is started in the background on a
fresh run dir and waited for (it runs until stopped), and ``make test`` is
not run again (it is what runs this). Blocks marked ``text`` are synopses
or need tools the machine may not have (grpcurl).

The README names the default ports (gateway 8080, services 50051-50058), so
this test needs them free and says so when they are not.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from kernel.settings import DEFAULT_PORTS, GATEWAY_DEFAULT_PORT
from tests.e2e.meshutil import ROOT, launch, new_run_dir, stop_and_check
from tipsmesh.up import port_taken

README = ROOT / "README.md"
_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.MULTILINE | re.DOTALL)


def shell_blocks() -> list[str]:
    return _BLOCK.findall(README.read_text())


def test_the_readme_blocks_run_as_written(tmp_path: Path) -> None:
    blocks = shell_blocks()
    assert blocks and "make up" in blocks[0], "the README starts with `make up`"
    # 50051-50058 lie in Linux's ephemeral range: another test's short-lived
    # connection may hold one for a moment. A mesh left running holds them for good.
    deadline = time.monotonic() + 60
    while taken := [p for p in (GATEWAY_DEFAULT_PORT, *DEFAULT_PORTS.values()) if port_taken(p)]:
        assert time.monotonic() < deadline, (
            f"the README's default ports are in use: {taken}; stop that mesh first"
        )
        time.sleep(0.5)
    run_dir = new_run_dir(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIPS_")}
    env["TIPS_RUN_DIR"] = str(run_dir)
    first = [line for line in blocks[0].splitlines() if line.split("#")[0].strip()]
    assert [line.split("#")[0].strip() for line in first] == ["make up", "make test"]

    mesh = launch(["make", "up"], env, run_dir, GATEWAY_DEFAULT_PORT)
    try:
        script = "\n".join(blocks[1:])
        ran = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", script],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert ran.returncode == 0, f"stdout:\n{ran.stdout}\nstderr:\n{ran.stderr}"
        # What the blocks printed is what a reader sees: tips, a stored signal, health.
        assert '"tips":[' in ran.stdout and "INGEST_OUTCOME_" in ran.stdout, ran.stdout
        assert ran.stdout.count("SERVING") >= len(DEFAULT_PORTS), ran.stdout
    finally:
        # make forwards SIGTERM to `tips up`; nothing of the mesh may be left.
        stop_and_check(mesh, signal.SIGTERM)
