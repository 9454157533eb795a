"""The contextual-bandit library: features, the policy, the ONNX export and the scorers.

Pure, apart from reading and writing model files. Its own top-level package
because two services and the lab share it: the recommender serves and
learns online with it (scoring its exports in process, or through Triton),
ml_pipelines trains and evaluates offline with it; ``sim`` and ``bench``
measure it. It imports nothing of ``services``.

How the recommender uses it (docs/policy.md argues the choices)::

    from policy import features, bandit, onnx_export, scoring

    # candidates: each eligible tip's row in the user's context
    rows = [(tip.catalog_tip, features.feature_vector(context, tip)) for tip in eligible]
    #   context: raw keys (features module docstring): local_hour, weekday,
    #   minutes_to_next_meeting, free_block_minutes, in_meeting, steps_today,
    #   steps_usual_by_now, sleep_last_night_minutes, mood, affinity_<category>
    #   tip: features.TipFeatures(catalog_tip, category, effort 1..3, minutes_needed, day_parts)

    # the shared part from the model (ONNX Runtime in process, or Triton):
    base = await scorer.score(np.stack([x for _, x in rows]))        # [K]
    decision = policy.choose(rows, rng, base_scores=base)            # or without base_scores:
    #   everything from the live statistics (same numbers, up to float32)
    decision.arm, decision.propensity, decision.probabilities, decision.scores,
    decision.means, decision.explored; policy.version; scorer.model_version

    # a reaction (or the reward wait running out) -> reward -> online update:
    policy.update(arm, x, bandit.REWARD_DONE | REWARD_SNOOZE | REWARD_DISMISS | REWARD_NO_REACTION)

    # persistence and the model:
    blob = policy.state(); policy = bandit.Policy.from_state(blob)
    version = onnx_export.export(policy, Path("models"))  # models/tip_scorer/<version>/model.onnx
    await onnx_scorer.reload()                             # swap in, no request fails

Modules:

- ``features``: ``FEATURE_NAMES``, ``TipFeatures``, ``feature_vector(context, tip)``,
  ``DIM``, ``ROW_NAMES``, ``CATEGORIES``, ``day_part(hour)``.
- ``bandit``: ``Policy(params=None)``, ``PolicyParams``, ``Decision``, reward constants.
- ``onnx_export``: ``export(policy, repository) -> version``, ``build_model``,
  ``versions``, ``config_pbtxt``, ``write_python_backend`` (CPU test Triton).
- ``scoring``: ``Scorer`` protocol, ``OnnxScorer``, ``TritonScorer``, ``FallbackScorer``.
"""
