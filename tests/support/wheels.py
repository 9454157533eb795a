"""Wheels built as the image builds them, and clean venvs to install them into.

``product_wheel`` builds the tips-mesh wheel from a copy of the checkout's
files as git sees them (tracked, or untracked and not ignored): the Docker
build context is the same set (``.dockerignore`` mirrors ``.gitignore``).
Building in the checkout itself would also pack whatever an earlier build
left in ``build/lib`` (a module deleted since would still be in the wheel).

``new_venv`` makes a venv with no pip and no system site-packages; ``pip_install``
installs into it with the project's pip (``pip --python``), which is faster
than bootstrapping a pip into every venv and leaves exactly what was installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Variables that would put another tree on a clean interpreter's path.
_PATH_VARIABLES = ("PYTHONPATH", "MYPYPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE")


def clean_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) without the variables
    that would let a clean interpreter import from somewhere else."""
    env = dict(os.environ if base is None else base)
    for name in _PATH_VARIABLES:
        env.pop(name, None)
    return env


def run(
    *cmd: str | Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The output of a command that must have succeeded (else its output, failing)."""
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def build_wheel(source: Path, dist: Path, distribution: str) -> Path:
    """The wheel of the project in ``source`` (no dependencies), as pip builds it."""
    build = [
        sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
        "--wheel-dir", dist, source,
    ]  # fmt: skip
    ok(run(*build))
    (built,) = dist.glob(f"{distribution}-*.whl")
    return built


def source_files() -> list[str]:
    """The checkout's files as git sees them: tracked or new, never ignored."""
    listed = ok(
        run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT)
    )
    # A tracked file deleted in the work tree is still listed: it is not there to copy.
    return [name for name in listed.split("\0") if name and (ROOT / name).is_file()]


def product_wheel(work: Path) -> Path:
    """The tips-mesh wheel, built in ``work`` from a clean copy of the checkout."""
    source = work / "source"
    for name in source_files():
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    return build_wheel(source, work / "dist", "tips_mesh")


def new_venv(path: Path) -> Path:
    """A venv without pip or system site-packages; its python."""
    ok(run(sys.executable, "-m", "venv", "--without-pip", path))
    return path / "bin" / "python"


def site_packages(venv: Path) -> Path:
    (found,) = venv.glob("lib/python3*/site-packages")
    return found


def pip_install(python: Path, *requirements: str | Path) -> None:
    """Install ``requirements`` (and their dependencies, from the package index)
    into the venv of ``python``."""
    ok(run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", *requirements))
