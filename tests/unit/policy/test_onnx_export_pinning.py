"""Exports prune old versions, but never the one promotion pinned."""

from __future__ import annotations

from pathlib import Path

import pytest

from policy import onnx_export
from policy.bandit import Policy

pytestmark = pytest.mark.unit


def test_exports_keep_the_promoted_version(tmp_path: Path) -> None:
    policy = Policy()
    for _ in range(2):
        onnx_export.export(policy, tmp_path, keep=2)
    config = tmp_path / onnx_export.MODEL_NAME / "config.pbtxt"
    config.write_text(onnx_export.config_pbtxt(policy.dim, onnx_export.MODEL_NAME, version=1))
    for _ in range(3):
        onnx_export.export(policy, tmp_path, keep=2)
    present = onnx_export.versions(tmp_path, onnx_export.MODEL_NAME)
    assert 1 in present, "the pinned (promoted) version was pruned"
    assert present[-2:] == [4, 5] and 2 not in present and 3 not in present


def test_pinned_versions_reads_the_version_policy(tmp_path: Path) -> None:
    config = tmp_path / "config.pbtxt"
    assert onnx_export.pinned_versions(config) == set()
    config.write_text(onnx_export.config_pbtxt(113, "tip_scorer"))
    assert onnx_export.pinned_versions(config) == set()
    config.write_text(onnx_export.config_pbtxt(113, "tip_scorer", version=12))
    assert onnx_export.pinned_versions(config) == {12}
