"""A training run's hyper-parameters: numbers by name, each bad one named."""

from __future__ import annotations

import pytest

from kernel.errors import InvalidArgument
from policy.bandit import PolicyParams
from services.ml_pipelines.core.training import parse_params

pytestmark = pytest.mark.unit


def test_numbers_parse_into_policy_params() -> None:
    params = parse_params({"alpha": "0.1", "ridge": "3", "epsilon": "0"})
    assert params == {"alpha": 0.1, "ridge": 3.0, "epsilon": 0.0}
    assert PolicyParams(**params).ridge == 3.0
    per_tip = parse_params({"arm_alpha": "0.3", "arm_optimism": "0"})
    assert PolicyParams(**per_tip).arm_width == 0.3


def test_bad_values_are_named() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_params(
            {"temperature": "warm", "epsilon": "1.5", "alpha": "-1", "nope": "2",
             "arm_optimism": "-0.1", "arm_alpha": "0"}
        )  # fmt: skip
    fields = dict(caught.value.violations)
    assert fields == {
        "training_run.params[alpha]": "must be positive",
        "training_run.params[arm_alpha]": "must be positive",
        "training_run.params[arm_optimism]": "must not be negative",
        "training_run.params[epsilon]": "must be in [0, 1)",
        "training_run.params[nope]": fields["training_run.params[nope]"],
        "training_run.params[temperature]": "must be a number",
    }
    assert fields["training_run.params[nope]"] == (
        "unknown parameter; known: alpha, arm_alpha, arm_optimism, arm_prior, epsilon, ridge,"
        " temperature"
    )
