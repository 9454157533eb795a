"""The tips-client distribution (clients/python) gives other projects typed stubs.

Its wheel is built as `pip install ./clients/python` builds it (the generated
``tips`` package comes from gen/python, not a copy), must hold both
``py.typed`` markers and every generated stub, and must depend on gRPC and
protobuf only. Installed into a fresh venv from the package index (no mesh
around), ``mypy --strict`` on a caller's snippet sees the real types; the
same snippet fails once a ``py.typed`` is removed from a copy of the install.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.wheels import build_wheel, new_venv, ok, pip_install, run, site_packages

pytestmark = pytest.mark.contract

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "python"
GEN = ROOT / "gen" / "python"
# What a clean install may bring: the client, gRPC, protobuf and their own needs.
ALLOWED_DISTRIBUTIONS = {
    "tips-client",
    "grpcio",
    "protobuf",
    "googleapis-common-protos",
    "typing-extensions",  # grpcio's
    "grpcio-health-checking",  # [health]
    "types-grpcio",  # [typing]
    "types-protobuf",  # [typing]
}

# A caller's code: passes mypy --strict only when both packages are typed.
SNIPPET = """\
from __future__ import annotations

import tipsclient
from tips.recommender.v1 import recommender_service_pb2 as rec
from tips.recommender.v1 import recommender_service_pb2_grpc as rec_grpc
from tips.recommender.v1 import tip_pb2


async def titles(token: str) -> list[str]:
    async with tipsclient.connect("recommender", token=token, identity="gateway") as channel:
        stub = rec_grpc.RecommenderServiceStub(channel)
        reply = await stub.ListTips(rec.ListTipsRequest(parent="users/me", page_size=3))
    return [tip.title for tip in reply.tips]


def minutes(tip: tip_pb2.Tip) -> int:
    return tip.minutes_needed
"""
# Mistakes only real types catch (with Any everywhere, mypy would say nothing).
MISTAKES = """\
from __future__ import annotations

import tipsclient
from tips.recommender.v1 import recommender_service_pb2 as rec
from tips.recommender.v1 import recommender_service_pb2_grpc as rec_grpc


async def wrong() -> None:
    channel = await tipsclient.connect("recommender", wait="soon")
    reply = await rec_grpc.RecommenderServiceStub(channel).ListTips(rec.GetTipRequest())
    count: int = reply.tips[0].title
    rec.ListTipsRequest(page_size="3")
"""
EXPECTED_MISTAKES = [
    'mistakes.py:9: error: Argument "wait" to "connect" has incompatible type "str"; '
    'expected "float | None"  [arg-type]',
    'mistakes.py:10: error: Argument 1 to "__call__" of "UnaryUnaryMultiCallable" has '
    'incompatible type "GetTipRequest"; expected "ListTipsRequest"  [arg-type]',
    'mistakes.py:11: error: Incompatible types in assignment (expression has type "str", '
    'variable has type "int")  [assignment]',
    'mistakes.py:12: error: Argument "page_size" to "ListTipsRequest" has incompatible '
    'type "str"; expected "int"  [arg-type]',
]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of clients/python beside the checkout's gen/python."""
    work = tmp_path_factory.mktemp("client-build")
    source = work / "clients" / "python"
    # A copy, so no stale build/ of the checkout ends up in it; gen/ is the real one.
    shutil.copytree(
        CLIENT, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    (work / "gen").mkdir()
    (work / "gen" / "python").symlink_to(GEN, target_is_directory=True)
    return build_wheel(source, work / "dist", "tips_client")


def _generated_files() -> set[str]:
    return {
        str(path.relative_to(GEN))
        for path in GEN.joinpath("tips").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_the_wheel_holds_both_typed_packages_and_every_stub(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"tips/py.typed", "tipsclient/py.typed"} <= names
    generated = _generated_files()
    assert "tips/recommender/v1/recommender_service_pb2_grpc.pyi" in generated
    assert generated - names == set()
    top = {name.split("/")[0] for name in names}
    assert top == {"tips", "tipsclient", wheel.name.split("-py3")[0] + ".dist-info"}


def _requirements(metadata: str) -> list[Requirement]:
    return [
        Requirement(line.split(":", 1)[1].strip())
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:")
    ]


def test_the_wheel_depends_on_grpc_and_protobuf_only(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        (meta,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        required = _requirements(archive.read(meta).decode())
    always = {canonicalize_name(r.name) for r in required if r.marker is None}
    assert always == {"grpcio", "protobuf", "googleapis-common-protos"}
    assert {canonicalize_name(r.name) for r in required} <= ALLOWED_DISTRIBUTIONS


def test_its_requirements_accept_the_versions_the_mesh_pins() -> None:
    mesh = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins: dict[str, str] = {}
    for line in [*mesh["dependencies"], *mesh["optional-dependencies"]["dev"]]:
        requirement = Requirement(line)
        for spec in requirement.specifier:
            if spec.operator == "==":
                pins[canonicalize_name(requirement.name)] = spec.version
    client = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    extras = client["optional-dependencies"].values()
    for line in [*client["dependencies"], *(r for extra in extras for r in extra)]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name in pins:  # the mesh's generated code runs on these versions
            assert requirement.specifier.contains(pins[name]), (line, pins[name])


@dataclass(frozen=True)
class Installed:
    python: Path
    site_packages: Path
    seconds: float


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """A fresh venv with the wheel and its dependencies from the package index."""
    began = time.monotonic()
    python = new_venv(tmp_path_factory.mktemp("client-venv") / "venv")
    pip_install(python, f"{wheel}[health,typing]")
    seconds = time.monotonic() - began
    print(f"tips-client: fresh venv and install from the index in {seconds:.1f} s")
    return Installed(python, site_packages(python.parents[1]), seconds)


def test_a_clean_install_runs_every_stub_without_the_mesh(installed: Installed) -> None:
    script = """
import importlib, importlib.metadata, pathlib, sys
import tips, tipsclient
# tips is a namespace package (no __init__.py): pkgutil does not walk it.
(root,) = [pathlib.Path(p) for p in tips.__path__]
modules = sorted(
    ".".join(("tips", *p.relative_to(root).with_suffix("").parts)) for p in root.rglob("*.py")
)
for name in modules:
    importlib.import_module(name)
print(len(modules))
print(",".join(sorted(d.metadata["Name"] for d in importlib.metadata.distributions())))
print("kernel" in sys.modules, importlib.util.find_spec("kernel") is None)
"""
    out = ok(run(installed.python, "-c", script, cwd=installed.python.parent))
    count, dists, kernel = out.splitlines()
    # Every *_pb2 and *_pb2_grpc module imports on the versions the index gave.
    assert int(count) == len([f for f in _generated_files() if f.endswith(".py")])
    names = {canonicalize_name(d) for d in dists.split(",")}
    assert names <= ALLOWED_DISTRIBUTIONS | {"pip"}, names - ALLOWED_DISTRIBUTIONS
    assert kernel == "False True"
    assert installed.seconds < 120


def _mypy(python: Path, work: Path, name: str, source: str) -> subprocess.CompletedProcess[str]:
    work.mkdir(parents=True, exist_ok=True)
    (work / name).write_text(source)
    (work / "mypy.ini").write_text("[mypy]\nstrict = True\n")
    mypy = [
        sys.executable, "-m", "mypy", "--python-executable", python, "--config-file", "mypy.ini",
        "--cache-dir", work / ".mypy_cache", "--no-error-summary", name,
    ]  # fmt: skip
    return run(*mypy, cwd=work)


def test_mypy_strict_sees_the_installed_types(installed: Installed, tmp_path: Path) -> None:
    assert _mypy(installed.python, tmp_path, "snippet.py", SNIPPET).stdout == ""
    wrong = _mypy(installed.python, tmp_path, "mistakes.py", MISTAKES)
    assert wrong.stdout.splitlines() == EXPECTED_MISTAKES


@pytest.mark.parametrize("package", ["tips", "tipsclient"])
def test_without_py_typed_the_same_snippet_fails(
    installed: Installed, package: str, tmp_path: Path
) -> None:
    python = new_venv(tmp_path / "venv")
    copy = site_packages(tmp_path / "venv")
    shutil.copytree(installed.site_packages, copy, dirs_exist_ok=True)
    (copy / package / "py.typed").unlink()
    result = _mypy(python, tmp_path / "work", "snippet.py", SNIPPET)
    assert result.returncode == 1
    untyped = [line for line in result.stdout.splitlines() if "[import-untyped]" in line]
    assert untyped, result.stdout
    assert all(f'Skipping analyzing "{package}' in line for line in untyped), untyped
    assert "missing library stubs or py.typed marker" in untyped[0]
