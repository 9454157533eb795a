"""The MLflow URI setting: a registry it can open, and no credentials in it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.ml_pipelines.settings import MlPipelinesSettings

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("https://ml:secret@mlflow.example:5000", "credentials"),
        ("sqlite:///relative.db", "must name a file"),
        ("file:///srv/mlruns", "must be a"),
    ],
)
def test_an_mlflow_uri_it_cannot_use_safely_is_refused(uri: str, says: str) -> None:
    with pytest.raises(ValidationError) as raised:
        MlPipelinesSettings(ml_pipelines_mlflow_uri=uri)
    assert says in str(raised.value)


def test_a_server_or_a_sqlite_file_is_accepted() -> None:
    for uri in ("http://mlflow:5000", "sqlite:////var/lib/tips/mlflow.db"):
        assert MlPipelinesSettings(ml_pipelines_mlflow_uri=uri).ml_pipelines_mlflow_uri == uri
