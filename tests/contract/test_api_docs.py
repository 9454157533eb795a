"""docs/api/ is generated from the protos: a stale page fails here, like gen/ drift."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.contract

ROOT = Path(__file__).resolve().parents[2]


def test_api_docs_match_the_protos(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "tools/gen_api_docs.py", "--out", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=60,
    )
    fresh = {p.name: p.read_text() for p in tmp_path.glob("*.md")}
    committed = {p.name: p.read_text() for p in (ROOT / "docs" / "api").glob("*.md")}
    assert fresh, "the generator wrote no page"
    stale = sorted(
        name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name)
    )
    assert not stale, f"docs/api is stale for {stale}: run `make gen`"


def test_every_service_package_has_a_page() -> None:
    pages = {p.stem for p in (ROOT / "docs" / "api").glob("*.md")}
    packages = {p.parent.parent.name for p in (ROOT / "proto" / "tips").glob("*/v1/*.proto")}
    assert pages == packages - {"options"}


def test_committed_openapi_matches_the_protos() -> None:
    result = subprocess.run(
        [sys.executable, "tools/gen_openapi.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
