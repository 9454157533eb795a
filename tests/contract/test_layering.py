"""The layers import downwards only: a service never imports another service.

tipsclient (bottom) <- kernel <- policy (the bandit library) <- services <- tipsmesh
(the CLI). tipsclient ships on its own to outside callers (clients/python), so it
imports no other first-party package: the kernel builds its TLS on it. The
gateway sits beside the services on the kernel: it reaches them over gRPC only.
A service that needs another's data asks it over gRPC or follows its events
(docs/architecture.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.contract

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = ("tipsclient", "kernel", "policy", "services", "gateway", "tipsmesh", "sim")
# Where a package lives when not at the top of the checkout.
SOURCE_ROOTS = {"tipsclient": ROOT / "clients" / "python"}
# What each top-level package (or service) may import of the first-party ones.
ALLOWED = {
    "tipsclient": {"tipsclient"},
    "kernel": {"kernel", "tipsclient"},
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
    for package in ("tipsclient", "kernel", "policy", "gateway", "sim", "services"):
        source_root = SOURCE_ROOTS.get(package, ROOT)
        for path in sorted((source_root / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            module = ".".join(path.relative_to(source_root).with_suffix("").parts)
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
