"""The recommender's use cases.

- ``decisions``: the decision (candidates -> eligibility -> features -> scores -> policy ->
  logged tips);
- ``reactions``: a reaction applied in one place (tip row, reward, done history, suppression);
- ``learning``: rewards -> online policy updates, snapshots, model exports.
"""
