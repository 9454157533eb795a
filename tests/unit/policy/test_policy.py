"""The tip policy: features, learning, proper propensities, persistence, and the
ONNX export scoring what the policy scores."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from policy.bandit import Policy, PolicyParams
from policy.features import (
    DIM,
    FEATURE_NAMES,
    ROW_NAMES,
    TipFeatures,
    day_part,
    feature_vector,
)
from policy.onnx_export import export, versions
from policy.scoring import FallbackScorer, OnnxScorer, TritonScorer
from tipsmesh.localinfra import free_port

WALK = TipFeatures("walk", "movement", 2, 10, frozenset({"afternoon"}))
WIND_DOWN = TipFeatures("wind-down", "sleep", 1, 15, frozenset({"evening", "night"}))


def test_feature_vector_is_bounded_and_named() -> None:
    ctx = {"local_hour": 15.0, "steps_today": 1000, "steps_usual_by_now": 4000, "mood": 3.0}
    x = feature_vector(ctx, WALK)
    assert x.shape == (DIM,) == (len(ROW_NAMES),)
    assert np.all(np.abs(x) <= 1.0 + 1e-9)
    named = dict(zip(ROW_NAMES, x, strict=True))
    assert named["bias"] == 1.0 and named["category_movement"] == 1.0
    assert named["steps_today_ratio"] == pytest.approx(-0.75)
    assert named["mood"] == 1.0  # clipped
    assert (
        named["day_part_fit"] == 1.0
        and feature_vector(ctx, WIND_DOWN)[ROW_NAMES.index("day_part_fit")] == 0.0
    )
    assert named["steps_today_ratio*category_movement"] == pytest.approx(-0.75)
    assert len(FEATURE_NAMES) == 9 and day_part(23.5) == "night"
    # Missing keys take documented defaults, not errors.
    assert np.isfinite(feature_vector({}, WALK)).all()


def test_probabilities_are_proper_and_propensity_is_the_chosen_ones() -> None:
    policy = Policy()
    rng = np.random.default_rng(0)
    cands = [(f"t{i}", rng.normal(size=DIM) / 5) for i in range(20)]
    decision = policy.choose(cands, rng)
    assert sum(decision.probabilities.values()) == pytest.approx(1.0)
    assert min(decision.probabilities.values()) >= PolicyParams().epsilon / 20 * 0.999
    assert decision.propensity == decision.probabilities[decision.arm]
    assert set(decision.scores) == set(decision.means) == {a for a, _ in cands}
    with pytest.raises(ValueError, match="candidates"):
        policy.choose([], rng)


def test_learns_the_better_tip_in_its_context() -> None:
    """Walks pay off in the afternoon when steps lag, wind-downs at night."""
    policy = Policy()
    rng = np.random.default_rng(1)
    afternoon = {"local_hour": 15.0, "steps_today": 500, "steps_usual_by_now": 5000}
    night = {"local_hour": 22.5, "sleep_last_night_minutes": 300}

    def reward(tip: str, when: str) -> float:
        good = (tip == "walk") == (when == "afternoon")
        return float(rng.random() < (0.8 if good else 0.1))

    for _ in range(300):
        when, ctx = ("afternoon", afternoon) if rng.random() < 0.5 else ("night", night)
        cands = [(t.catalog_tip, feature_vector(ctx, t)) for t in (WALK, WIND_DOWN)]
        d = policy.choose(cands, rng)
        policy.update(d.arm, dict(cands)[d.arm], reward(d.arm, when))
    for ctx, best in ((afternoon, "walk"), (night, "wind-down")):
        cands = [(t.catalog_tip, feature_vector(ctx, t)) for t in (WALK, WIND_DOWN)]
        d = policy.choose(cands, rng)
        assert max(d.means, key=lambda a: d.means[a]) == best
        assert d.probabilities[best] > 0.9


def test_update_reflects_at_once_and_state_round_trips() -> None:
    policy = Policy()
    x = feature_vector({"local_hour": 9.0}, WALK)
    before = policy.choose([("walk", x)], np.random.default_rng(0)).means["walk"]
    policy.update("walk", x, 1.0)
    after = policy.choose([("walk", x)], np.random.default_rng(0)).means["walk"]
    assert after > before
    assert policy.version.endswith("@1")
    with pytest.raises(ValueError, match="x: expected shape"):
        policy.update("walk", x[:3], 1.0)

    copy = Policy.from_state(policy.state())
    rows = np.stack([x, feature_vector({"local_hour": 20.0}, WIND_DOWN)])
    np.testing.assert_allclose(copy.shared_scores(rows), policy.shared_scores(rows))
    assert copy.arm_terms("walk") == pytest.approx(policy.arm_terms("walk"), rel=1e-12)
    assert copy.version == policy.version


def test_per_tip_bonus_has_its_own_width_and_optimism() -> None:
    x = feature_vector({"local_hour": 9.0}, WALK)
    same = Policy(PolicyParams(alpha=0.1, arm_prior=4.0))
    wide = Policy(PolicyParams(alpha=0.1, arm_prior=4.0, arm_alpha=1.0))
    hopeful = Policy(PolicyParams(alpha=0.1, arm_prior=4.0, arm_optimism=0.2))
    for policy in (same, wide, hopeful):
        policy.update("walk", x, 1.0)
    # arm_alpha None: the per-tip bonus is as wide as the shared one (as before).
    assert same.arm_terms("walk")[1] == pytest.approx(0.1 / np.sqrt(5.0))
    assert same.arm_terms("new")[1] == pytest.approx(0.1 / 2.0)
    assert wide.arm_terms("walk")[1] == pytest.approx(1.0 / np.sqrt(5.0))
    # Optimism: the prior's pseudo-observations count 0.2 each in the score, not in
    # the residual mean (so not in what the shared model learns around).
    assert hopeful.arm_terms("new")[1] == pytest.approx(0.1 / 2.0 + 0.2)
    assert hopeful.arm_terms("walk")[1] == pytest.approx(0.1 / np.sqrt(5.0) + 0.2 * 4 / 5)
    assert hopeful.arm_terms("walk")[0] == same.arm_terms("walk")[0]
    np.testing.assert_allclose(hopeful.theta, same.theta)
    # The wider bonus is in the scores a decision draws from, and in no shared part.
    rng = np.random.default_rng(0)
    d_same, d_wide = same.choose([("walk", x)], rng), wide.choose([("walk", x)], rng)
    assert d_wide.scores["walk"] - d_same.scores["walk"] == pytest.approx(0.9 / np.sqrt(5.0))
    np.testing.assert_allclose(wide.shared_scores(x[None]), same.shared_scores(x[None]))
    # Persisted with the other parameters; a state written before they existed loads
    # with the old behaviour.
    copy = Policy.from_state(wide.state())
    assert copy.params == wide.params
    assert copy.arm_terms("walk") == pytest.approx(wide.arm_terms("walk"), rel=1e-12)
    old = _without_params(same.state(), "arm_alpha", "arm_optimism")
    assert Policy.from_state(old).arm_terms("walk") == pytest.approx(
        same.arm_terms("walk"), rel=1e-12
    )


def _joint_ridge(
    data: list[tuple[str, np.ndarray, float]], arms: list[str], params: PolicyParams
) -> tuple[np.ndarray, dict[str, float], np.ndarray]:
    """The ridge regression on ``[x, one-hot(tip)]`` solved directly: theta, the tips'
    means, and theta's block of the inverse precision."""
    dim = len(data[0][1])
    z = np.zeros((len(data), dim + len(arms)))
    for i, (arm, x, _) in enumerate(data):
        z[i, :dim] = x
        z[i, dim + arms.index(arm)] = 1.0
    r = np.array([reward for _, _, reward in data])
    prior = np.diag([params.ridge] * dim + [params.arm_prior] * len(arms))
    inverse = np.linalg.inv(prior + z.T @ z)
    solution = inverse @ z.T @ r
    return solution[:dim], dict(zip(arms, solution[dim:], strict=True)), inverse[:dim, :dim]


def test_the_shared_model_and_the_tips_means_are_fitted_jointly() -> None:
    """After every reward the policy holds the exact ridge solution on [x, one-hot(tip)],
    through the rank-one updates and past the periodic rebuild (every 2000)."""
    rng = np.random.default_rng(7)
    params = PolicyParams(ridge=2.0, arm_prior=3.0)
    policy = Policy(params, dim=12)
    arms = [f"t{i}" for i in range(6)]
    quality = dict(zip(arms, rng.normal(0, 0.3, size=6), strict=True))
    weights = rng.normal(size=12)
    data = []
    for step in range(2100):
        arm = arms[int(rng.integers(6)) if step % 3 else 0]  # tip t0 shown more often
        x = rng.normal(size=12) / 3
        reward = float(x @ weights + quality[arm] + rng.normal(0, 0.1))
        policy.update(arm, x, reward)
        data.append((arm, x, reward))
        if step in (0, 5, 1999, 2099):
            theta, means, cov = _joint_ridge(data, arms, params)
            np.testing.assert_allclose(policy.theta, theta, atol=1e-8)
            np.testing.assert_allclose(policy.a_inv, cov, atol=1e-10)
            for a in arms:
                assert policy.arm_terms(a)[0] == pytest.approx(means[a], abs=1e-8)
    # Learned: the tips' own qualities, relative to each other (the intercept is shared
    # between theta and the means).
    learned = np.array([policy.arm_terms(a)[0] for a in arms])
    truth = np.array([quality[a] for a in arms])
    np.testing.assert_allclose(learned - learned.mean(), truth - truth.mean(), atol=0.05)


def test_a_tips_mean_does_not_depend_on_when_its_rewards_came() -> None:
    """A tip rewarded early, before the shared model knew why, keeps no credit for it:
    the same rewards in another order give the same model (they did not when the tip's
    mean summed residuals against the shared model of their moment)."""
    rng = np.random.default_rng(3)
    walk = [("walk", np.array([1.0, 1.0]), 1.0)] * 20  # rewarded because x[1] is high
    rest = []
    for _ in range(400):
        high = float(rng.random() < 0.5)
        rest.append((f"t{int(rng.integers(4))}", np.array([1.0, high]), high))
    early, late = Policy(dim=2), Policy(dim=2)
    for arm, x, reward in walk + rest:
        early.update(arm, x, reward)
    for arm, x, reward in rest + walk:
        late.update(arm, x, reward)
    np.testing.assert_allclose(early.theta, late.theta, atol=1e-9)
    assert early.arm_terms("walk")[0] == pytest.approx(late.arm_terms("walk")[0], abs=1e-9)
    # Its rewards are what its row predicts: no credit of its own.
    assert abs(early.arm_terms("walk")[0]) < 0.02


def test_a_state_from_before_the_joint_fit_loads_with_its_scores() -> None:
    """Written with residual sums (``arm_sum``) and no per-tip row sums: loads with the
    same theta and tip means, and learns on."""
    rng = np.random.default_rng(4)
    a = np.eye(5) * 3.0 + np.cov(rng.normal(size=(5, 40))) * 40
    b = rng.normal(size=5)
    meta = {"algorithm": "ridge-ucb-softmax", "params": PolicyParams().__dict__, "dim": 5}
    buf = io.BytesIO()
    np.savez(
        buf,
        meta=np.array(json.dumps({**meta, "updates": 40})),
        a=a,
        b=b,
        arms=np.array(["walk", "nap"], dtype=str),
        arm_n=np.array([30.0, 10.0]),
        arm_sum=np.array([3.5, -1.5]),
    )
    policy = Policy.from_state(buf.getvalue())
    np.testing.assert_allclose(policy.theta, np.linalg.solve(a, b))
    np.testing.assert_allclose(policy.a_inv, np.linalg.inv(a))
    assert policy.arm_terms("walk")[0] == pytest.approx(3.5 / 35.0)
    assert policy.arm_terms("nap")[0] == pytest.approx(-1.5 / 15.0)
    assert policy.version.endswith("@40")
    x = np.ones(5) / 5
    policy.update("walk", x, 1.0)
    assert policy.version.endswith("@41") and np.isfinite(policy.theta).all()
    copy = Policy.from_state(policy.state())
    np.testing.assert_allclose(copy.theta, policy.theta, atol=1e-10)
    assert copy.arm_terms("walk") == pytest.approx(policy.arm_terms("walk"), rel=1e-9)


def _without_params(state: bytes, *names: str) -> bytes:
    """``state`` as a policy without the parameters ``names`` wrote it."""
    with np.load(io.BytesIO(state), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    meta["params"] = {k: v for k, v in meta["params"].items() if k not in names}
    arrays["meta"] = np.array(json.dumps(meta))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _trained(seed: int = 2) -> Policy:
    rng = np.random.default_rng(seed)
    policy = Policy()
    for i in range(400):
        policy.update(f"t{i % 9}", rng.normal(size=DIM) / 3, float(rng.random() < 0.3))
    return policy


def test_onnx_model_scores_what_the_policy_scores(tmp_path: Path) -> None:
    policy = _trained()
    version = export(policy, tmp_path)
    assert version == "1"
    session = ort.InferenceSession(str(tmp_path / "tip_scorer" / "1" / "model.onnx"))
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["policy_version"] == policy.version
    rows = np.random.default_rng(5).normal(size=(64, DIM)) / 3
    (scores,) = session.run(["scores"], {"rows": rows.astype(np.float32)})
    np.testing.assert_allclose(scores, policy.shared_scores(rows), atol=1e-5)
    # The decision with the model's scores equals the decision without them.
    cands = [(f"t{i}", rows[i]) for i in range(64)]
    a = policy.choose(cands, np.random.default_rng(1), base_scores=scores)
    b = policy.choose(cands, np.random.default_rng(1))
    assert a.arm == b.arm
    assert a.propensity == pytest.approx(b.propensity, rel=1e-3)
    config = (tmp_path / "tip_scorer" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and f"dims: [ -1, {DIM} ]" in config


def test_export_keeps_the_last_versions(tmp_path: Path) -> None:
    policy = Policy()
    for _ in range(5):
        export(policy, tmp_path, keep=3)
    assert versions(tmp_path) == [3, 4, 5]
    assert not [p for p in (tmp_path / "tip_scorer").iterdir() if p.name.startswith(".")]


async def test_onnx_scorer_swaps_models_without_failing_requests(tmp_path: Path) -> None:
    export(Policy(), tmp_path)
    scorer = OnnxScorer(tmp_path)
    rows = np.random.default_rng(3).normal(size=(8, DIM))
    trained = _trained()
    export(trained, tmp_path)
    results = await asyncio.gather(
        *(scorer.score(rows) for _ in range(20)),
        scorer.reload(),
        *(scorer.score(rows) for _ in range(20)),
    )
    assert results[20] == "2" and scorer.model_version == "2"
    np.testing.assert_allclose(await scorer.score(rows), trained.shared_scores(rows), atol=1e-4)
    assert scorer.policy_version == trained.version
    with pytest.raises(FileNotFoundError):
        await scorer.reload("7")
    assert scorer.model_version == "2"  # a failed load leaves the model serving


async def test_fallback_when_triton_is_unreachable(tmp_path: Path) -> None:
    export(_trained(), tmp_path)
    onnx = OnnxScorer(tmp_path)
    triton = TritonScorer(f"127.0.0.1:{free_port()}", timeout_s=2.0)
    scorer = FallbackScorer(triton, onnx, retry_after_s=60)
    rows = np.random.default_rng(4).normal(size=(3, DIM))
    try:
        scores = await scorer.score(rows)
    finally:
        await triton.close()
    np.testing.assert_allclose(scores, await onnx.score(rows))
    assert scorer.using_fallback and scorer.fallbacks == 1 and scorer.reason
    assert scorer.health()["scoring_runtime"] == "onnxruntime"
    assert scorer.model_version == onnx.model_version
