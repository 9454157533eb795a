"""ONNX Runtime in process and a real Triton give the same scores on the same
model file; with Triton stopped, FallbackScorer scores in process and says so."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from policy.bandit import Policy
from policy.features import DIM
from policy.onnx_export import export, write_python_backend
from policy.scoring import FallbackScorer, OnnxScorer, TritonScorer
from tipsmesh.localinfra import LocalTriton


def _trained_policy(rng: np.random.Generator) -> Policy:
    policy = Policy()
    for i in range(500):
        policy.update(f"tip-{i % 12}", rng.normal(size=DIM), float(rng.random() < 0.3))
    return policy


def _repository(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, Policy]:
    policy = _trained_policy(rng)
    repo = tmp_path / "models"
    export(policy, repo)
    write_python_backend(repo)
    return repo, policy


async def test_triton_and_onnxruntime_give_the_same_scores(
    tmp_path: Path, triton_factory: Callable[[Path], LocalTriton]
) -> None:
    rng = np.random.default_rng(3)
    repo, policy = _repository(tmp_path, rng)
    started = time.monotonic()
    triton = triton_factory(repo)
    ready_s = time.monotonic() - started
    triton_scorer = TritonScorer(triton.url, timeout_s=10.0)
    try:
        onnx_scorer = OnnxScorer(repo)
        for k in (1, 7, 64):
            rows = rng.normal(size=(k, DIM))
            in_process = await onnx_scorer.score(rows)
            remote = await triton_scorer.score(rows)
            assert remote.shape == (k,)
            np.testing.assert_allclose(remote, in_process, rtol=0, atol=1e-5)
            np.testing.assert_allclose(in_process, policy.shared_scores(rows), atol=1e-4)
        assert triton_scorer.model_version == onnx_scorer.model_version == "1"
    finally:
        await triton_scorer.close()
    print(f"tritonserver ready in {ready_s:.1f} s")


async def test_fallback_scores_in_process_when_triton_is_stopped(
    tmp_path: Path, triton_factory: Callable[[Path], LocalTriton]
) -> None:
    rng = np.random.default_rng(4)
    repo, _ = _repository(tmp_path, rng)
    triton = triton_factory(repo)
    onnx_scorer = OnnxScorer(repo)
    primary = TritonScorer(triton.url, timeout_s=2.0)
    scorer = FallbackScorer(primary, onnx_scorer, retry_after_s=60.0)
    rows = rng.normal(size=(5, DIM))
    try:
        first = await scorer.score(rows)
        assert not scorer.using_fallback and scorer.fallbacks == 0
        assert scorer.health()["scoring_runtime"] == "triton"

        triton.stop()
        assert triton.process is not None and triton.process.returncode is not None

        second = await scorer.score(rows)
        np.testing.assert_allclose(second, first, atol=1e-5)
        assert scorer.using_fallback
        assert scorer.fallbacks == 1
        assert scorer.reason  # names the transport error
        assert scorer.health() == {
            "scoring_runtime": "onnxruntime",
            "using_fallback": True,
            "reason": scorer.reason,
            "fallbacks": 1,
        }
        # Within retry_after_s Triton is not tried again: no timeout per request.
        tick = time.monotonic()
        await scorer.score(rows)
        assert time.monotonic() - tick < 0.5 and scorer.fallbacks == 2
    finally:
        await primary.close()
