"""One way to do each thing the kernel does: times convert with ``kernel.timestamps``.

Protobuf's ``FromDatetime`` takes a naive datetime as UTC and its ``ToDatetime``
without a zone returns a naive one; the kernel's functions refuse the first and
never return the second (and cost half as much). ``ToTimedelta`` raises
OverflowError on a client's absurd Duration, where ``timedelta_of`` names the
field. So no first-party code outside the kernel calls protobuf's own.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.contract

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("services", "gateway", "policy", "sim", "tipsmesh", "examples")
PROTOBUF_OWN = {"FromDatetime", "ToDatetime", "ToTimedelta"}


def _calls(path: Path) -> list[str]:
    """``line: method`` for each call of protobuf's own conversions in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        f"{node.lineno}: {node.func.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in PROTOBUF_OWN
    ]


def test_times_convert_through_the_kernel_only() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{call}"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for call in _calls(path)
    ]
    assert found == [], "use kernel.timestamps (timestamp, to_datetime, datetime_of, timedelta_of)"


def test_the_check_sees_both_calls(tmp_path: Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text(
        "t.FromDatetime(now)\nx = msg.start_time.ToDatetime(UTC)\nd = msg.wait.ToTimedelta()\n"
    )
    assert _calls(sample) == ["1: FromDatetime", "2: ToDatetime", "3: ToTimedelta"]
