"""The layers import downwards only: a service never imports another service.

kernel (bottom) <- policy (the bandit library) <- services <- tipsmesh (the CLI).
The gateway sits beside the services on the kernel: it reaches them over gRPC
only. A service that needs another's data asks it over gRPC or follows its
events (docs/architecture.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.contract

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = ("kernel", "policy", "services", "gateway", "tipsmesh", "sim")
# What each top-level package (or service) may import of the first-party ones.
ALLOWED = {
    "kernel": {"kernel"},
    "policy": {"kernel", "policy"},
    "gateway": {"kernel", "gateway"},
    "sim": {"kernel", "policy", "sim"},
}


def _imports(path: Path) -> set[str]:
    """The first-party modules ``path`` imports, dotted."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {m for m in found if m.split(".")[0] in FIRST_PARTY}


def _layer(module: str) -> str:
    """``services.events.core`` -> ``services.events``; ``kernel.bus`` -> ``kernel``."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "services" and len(parts) > 1 else parts[0]


def _violations() -> list[str]:
    out: list[str] = []
    for package in ("kernel", "policy", "gateway", "sim", "services"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            own = _layer(module)
            allowed = ALLOWED.get(own, {"kernel", "policy", own})
            for imported in _imports(path):
                if _layer(imported) not in allowed:
                    out.append(f"{module} imports {imported}")
    return out


def test_no_layer_imports_upwards_or_sideways() -> None:
    assert _violations() == []


def test_the_check_sees_a_service_importing_another(tmp_path: Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text("from services.recommender import store\nimport kernel.bus\n")
    assert _imports(sample) == {"services.recommender", "kernel.bus"}
    assert _layer("services.ml_pipelines.offline") == "services.ml_pipelines"
    assert _layer("services.recommender") == "services.recommender"
