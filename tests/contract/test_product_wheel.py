"""The product's wheel carries what the processes read at start (issue 14: the image's
gateway crashed because `pip install .` left out the descriptor set). Installed into
a clean venv and run as a whole mesh: tests/e2e/test_installed_wheel.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.wheels import ROOT, ok, product_wheel, run

pytestmark = pytest.mark.contract


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel the image installs, unpacked as site-packages would hold it."""
    wheel = product_wheel(tmp_path_factory.mktemp("wheel"))
    site = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return site


def test_the_wheel_holds_the_descriptor_set_beside_the_stubs(unpacked: Path) -> None:
    assert (unpacked / "tips" / "tips.binpb").is_file()
    assert (unpacked / "tips" / "options" / "v1" / "options_pb2.py").is_file()


def test_the_installed_gateway_reads_the_installed_descriptor_set(unpacked: Path) -> None:
    """Imported from the unpacked wheel (first on the path), outside the checkout."""
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from gateway.descriptors import DEFAULT_IMAGE, load_image\n"
        "assert DEFAULT_IMAGE.is_relative_to(sys.argv[1]), DEFAULT_IMAGE\n"
        "names = {f.name for f in load_image().file}\n"
        "assert 'tips/recommender/v1/recommender_service.proto' in names, sorted(names)\n"
        "from gateway.app import create_app\n"
        "from kernel.settings import Settings\n"
        "create_app(Settings(insecure=True))\n"
        "print('ok')\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", probe, str(unpacked)],
        cwd=unpacked.parent, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ran.returncode == 0 and ran.stdout.strip() == "ok", ran.stderr


def test_an_installed_package_keeps_models_outside_itself(unpacked: Path, tmp_path: Path) -> None:
    """An installed package's directory is not writable and holds no models/: the
    services default to a per-user state directory, and `tips up` seeds its
    repository by exporting the policy's prior."""
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from pathlib import Path\n"
        "from services.recommender.settings import RecommenderSettings\n"
        "from services.ml_pipelines.settings import MlPipelinesSettings\n"
        "from tipsmesh.up import seed_model_repository\n"
        "site, state = Path(sys.argv[1]), Path(sys.argv[2])\n"
        "repos = [RecommenderSettings().recommender_model_repository,\n"
        "         MlPipelinesSettings().ml_pipelines_model_repository]\n"
        "assert {Path(r) for r in repos} == {state / 'tips-mesh' / 'models'}, repos\n"
        "seed_model_repository(state / 'seeded')\n"
        "assert (state / 'seeded' / 'tip_scorer' / '1' / 'model.onnx').is_file()\n"
        "assert not (site / 'models').exists()\n"
        "print('ok')\n"
    )
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path)}
    ran = subprocess.run(
        [sys.executable, "-c", probe, str(unpacked), str(tmp_path)],
        cwd=unpacked.parent, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert ran.returncode == 0 and ran.stdout.strip() == "ok", ran.stderr


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile without continuation lines."""
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split()[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_the_image_installs_the_wheel_as_the_installed_mesh_test_does() -> None:
    """tests/e2e/test_installed_wheel.py runs the mesh from `pip install WHEEL` into a
    clean venv, the wheel built from the source as git sees it: the Dockerfile builds
    the wheel in a stage of its own and installs only it, nothing of the source."""
    stages: list[list[tuple[str, str]]] = []
    for instruction, arguments in _instructions((ROOT / "Dockerfile").read_text()):
        if instruction == "FROM":
            stages.append([])
        stages[-1].append((instruction, arguments))
    build, image = stages
    assert ("COPY", ". .") in build
    assert [a for i, a in build if i == "RUN"] == [
        "pip wheel --no-cache-dir --no-deps --wheel-dir /wheels ."
    ]
    assert [a for i, a in image if i == "RUN"] == [
        "pip install --no-cache-dir /wheels/tips_mesh-*.whl"
    ]
    assert [a for i, a in image if i == "COPY"] == [
        "--from=wheel /wheels /wheels",
        "models ./models",
    ]
    # The build context leaves out what git ignores: the same files the test builds from.
    docker = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    tracked = ok(run("git", "ls-files", "-z", ".gitignore", "**/.gitignore", cwd=ROOT))
    for gitignore in filter(None, tracked.split("\0")):
        folder = str(Path(gitignore).parent)
        for line in (ROOT / gitignore).read_text().splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            pattern = line.strip().strip("/")
            covered = {pattern, f"**/{pattern}", f"{folder}/{pattern}"}
            assert covered & docker, f"{gitignore}: {line!r} is not in .dockerignore"
