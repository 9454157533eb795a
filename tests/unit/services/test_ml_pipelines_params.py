"""A training run's hyper-parameters: numbers and switches by name, each bad one named."""

from __future__ import annotations

import pytest

from kernel.errors import InvalidArgument
from policy.bandit import PolicyParams
from services.ml_pipelines.core.training import _param_text, parse_params

pytestmark = pytest.mark.unit


def test_numbers_and_switches_parse_into_policy_params() -> None:
    params = parse_params({"alpha": "0.1", "ridge": "3", "tip_context": " True "})
    assert params == {"alpha": 0.1, "ridge": 3.0, "tip_context": True}
    assert PolicyParams(**params).tip_context is True
    assert parse_params({"tip_context": "false"}) == {"tip_context": False}
    # What the API shows is what it reads back.
    assert {k: _param_text(v) for k, v in params.items()} == {
        "alpha": "0.1",
        "ridge": "3.0",
        "tip_context": "true",
    }


def test_bad_values_are_named() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_params({"tip_context": "1", "epsilon": "1.5", "alpha": "-1", "nope": "2"})
    fields = dict(caught.value.violations)
    assert fields == {
        "training_run.params[alpha]": "must be positive",
        "training_run.params[epsilon]": "must be in [0, 1)",
        "training_run.params[nope]": fields["training_run.params[nope]"],
        "training_run.params[tip_context]": "must be true or false",
    }
    assert fields["training_run.params[nope]"].startswith("unknown parameter; known: alpha")
    assert "tip_context" in fields["training_run.params[nope]"]
