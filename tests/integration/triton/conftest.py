"""A real tritonserver for the Triton tests (pytriton's bundled 2.51, Python
backend, CPU), run from its own venv built by tools/triton_env.sh
(``tipsmesh.localinfra.LocalTriton``, which ``tips bench scoring`` runs too).

Never skips: a venv that cannot be built or a server that does not become
ready fails the test with the log's tail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tipsmesh.localinfra import LocalInfraError, LocalTriton, triton_venv

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def triton_env() -> Path:
    try:
        return triton_venv(ROOT)
    except LocalInfraError as exc:
        pytest.fail(str(exc))


@pytest.fixture
def triton_factory(triton_env: Path, tmp_path: Path) -> Iterator[Callable[[Path], LocalTriton]]:
    started: list[LocalTriton] = []

    def factory(repository: Path) -> LocalTriton:
        triton = LocalTriton(triton_env, repository, tmp_path / f"triton-{len(started)}.log")
        started.append(triton)
        try:
            triton.start()
        except LocalInfraError as exc:
            pytest.fail(str(exc))
        return triton

    yield factory
    for triton in started:
        triton.stop()
