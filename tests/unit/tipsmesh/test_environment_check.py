"""`tips serve` and `tips up` refuse TIPS_* variables no process reads, naming them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tipsmesh.registry import environment_variables

pytestmark = pytest.mark.unit


def test_the_mesh_knows_every_services_settings_and_the_tools_variables() -> None:
    known = environment_variables()
    for name in ("TIPS_HOST", "TIPS_RECOMMENDER_TRITON_URL", "TIPS_EVENTS_RELAY_PROCESS",
                 "TIPS_NOTIFIER_KEK_RING", "TIPS_PORT_BASE", "TIPS_RUN_DIR"):  # fmt: skip
        assert name in known, name
    assert "TIPS_TRITON_URL" not in known


@pytest.mark.parametrize("command", [["serve", "auth"], ["up"]])
def test_a_stale_name_stops_the_start_with_exit_2(command: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIPS_")}
    env["TIPS_TRITON_URL"] = "triton:8001"
    ran = subprocess.run(
        [sys.executable, "-m", "tipsmesh.cli", *command],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ran.returncode == 2, ran.stderr
    assert "TIPS_TRITON_URL" in ran.stderr and "TIPS_RECOMMENDER_TRITON_URL" in ran.stderr
