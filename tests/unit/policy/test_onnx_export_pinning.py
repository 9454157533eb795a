"""Exports prune old versions, but never one that serves; every version is loadable."""

from __future__ import annotations

from pathlib import Path

import pytest

from policy import onnx_export
from policy.bandit import Policy

pytestmark = pytest.mark.unit


def test_exports_keep_the_serving_version(tmp_path: Path) -> None:
    policy = Policy()
    for _ in range(2):
        onnx_export.export(policy, tmp_path, keep=2)
    onnx_export.lease(tmp_path / onnx_export.MODEL_NAME / "1", "here")  # what serving does
    for _ in range(3):
        onnx_export.export(policy, tmp_path, keep=2)
    present = onnx_export.versions(tmp_path, onnx_export.MODEL_NAME)
    assert 1 in present, "the serving version was pruned"
    assert present[-2:] == [4, 5] and 2 not in present and 3 not in present
    assert (tmp_path / onnx_export.MODEL_NAME / "5" / onnx_export.STATE_FILE).is_file()


def test_an_older_version_policy_is_replaced_by_all_versions(tmp_path: Path) -> None:
    """Older repositories load the latest version only, or the one a promotion
    pinned; Triton must load whichever version the recommender asks for."""
    root = tmp_path / onnx_export.MODEL_NAME
    root.mkdir()
    config = root / "config.pbtxt"
    python_backend = onnx_export.config_pbtxt(113, backend="python")
    for older in ("latest: { num_versions: 1 }", "specific: { versions: [12] }"):
        config.write_text(python_backend.replace(onnx_export.ALL_VERSIONS, older))
        onnx_export.export(Policy(), tmp_path)
        assert config.read_text() == python_backend  # only the version policy changed


def test_a_version_serving_in_another_replica_stays_while_its_lease_lasts(
    tmp_path: Path,
) -> None:
    """Replicas export into one repository: each renews a lease on the version it
    serves, and pruning by any of them leaves leased versions in place."""
    import os
    import time

    policy = Policy()
    onnx_export.export(policy, tmp_path, keep=2)  # version 1, served by another replica
    root = tmp_path / onnx_export.MODEL_NAME
    onnx_export.lease(root / "1", "a")
    onnx_export.lease(root / "1", "b")
    onnx_export.export(policy, tmp_path, keep=2)
    onnx_export.export(policy, tmp_path, keep=2)  # 1 is past the last two
    assert onnx_export.versions(tmp_path) == [1, 2, 3]
    onnx_export.release(root / "1", "a")  # a moved on; b still serves it
    onnx_export.export(policy, tmp_path, keep=2)
    assert onnx_export.versions(tmp_path) == [1, 3, 4]
    stale = time.time() - onnx_export.LEASE_SECONDS - 1  # b stopped renewing (it died)
    os.utime(root / "1" / f"{onnx_export.LEASE_FILE}.b", (stale, stale))
    onnx_export.export(policy, tmp_path, keep=2)
    assert onnx_export.versions(tmp_path) == [4, 5]
