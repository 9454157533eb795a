"""Settings of the ml_pipelines service (``TIPS_ML_PIPELINES_*``), on top of the mesh's."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from kernel.settings import Settings, default_model_repository, default_state_dir
from policy import catalog

_DURABLE = r"^[A-Za-z0-9_-]{1,64}$"
# What the registry may be: an MLflow server (its artifact store), or a sqlite
# file read in process (artifacts in a folder beside it).
MLFLOW_SCHEMES = ("sqlite", "http", "https")


def default_mlflow_uri() -> str:
    """A sqlite file in the service's state directory (``kernel.settings``)."""
    return "sqlite:///" + str(Path(default_state_dir("mlflow")) / "mlflow.db")


class MlPipelinesSettings(Settings):
    """The mesh's settings plus the ml_pipelines service's own knobs."""

    # Triton model repository root (models/<model>/<version>/model.onnx): trained
    # versions are written here, registered artifacts must lie inside it, and
    # promotion rewrites <model>/config.pbtxt. Tests use a temporary directory.
    ml_pipelines_model_repository: str = Field(default_factory=default_model_repository)
    # The MLflow tracking and registry URI: the model registry (models, versions,
    # their state, the promoted version) and the training and evaluation runs.
    # sqlite:///<file> (artifacts in <file's folder>/artifacts) or an MLflow
    # server's http(s) URL. docs/ml-pipelines.md, "Registry".
    ml_pipelines_mlflow_uri: str = Field(default_factory=default_mlflow_uri)
    # The tip catalog file whose tip features rebuild candidate rows from logs.
    ml_pipelines_catalog_path: str = str(catalog.DEFAULT_FILE)
    # Durable consumers (tests vary them so parallel runs do not share state).
    ml_pipelines_decisions_durable: str = Field(default="ml-pipelines-decisions", pattern=_DURABLE)
    ml_pipelines_rewards_durable: str = Field(default="ml-pipelines-rewards", pattern=_DURABLE)
    ml_pipelines_exports_durable: str = Field(default="ml-pipelines-exports", pattern=_DURABLE)
    ml_pipelines_erasure_durable: str = Field(default="ml-pipelines-erasure", pattern=_DURABLE)
    # The recommender's exports kept in the registry, newest first, besides those
    # evaluated or promoted (the rest are deleted with their runs).
    ml_pipelines_keep_exports: int = Field(default=50, ge=1)
    # Fewer joined decisions than this make an evaluation INCONCLUSIVE.
    ml_pipelines_min_eval_decisions: int = Field(default=100, ge=1)
    # Most logged decisions one evaluation or training run reads.
    ml_pipelines_max_logged_rows: int = Field(default=200_000, ge=1)
    # Rows per training step: progress and cancellation are checked between steps.
    ml_pipelines_train_chunk: int = Field(default=500, ge=1, le=100_000)
    # Signals per ReplayAllSignals chunk read by feature backfills.
    ml_pipelines_backfill_chunk: int = Field(default=500, ge=1, le=5000)

    @field_validator("ml_pipelines_mlflow_uri")
    @classmethod
    def _mlflow_uri(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in MLFLOW_SCHEMES:
            raise ValueError(f"must be a {', '.join(MLFLOW_SCHEMES)} URI, got {parts.scheme!r}")
        if parts.scheme == "sqlite" and not parts.path.startswith("//"):
            raise ValueError("a sqlite URI must name a file: sqlite:////absolute/path.db")
        if parts.username or parts.password:
            # A URI is logged and echoed in errors: credentials go in MLflow's own
            # variables (MLFLOW_TRACKING_USERNAME/_PASSWORD or _TOKEN), never here.
            raise ValueError("must not carry credentials (user:password@): use MLflow's variables")
        return value


def ml_pipelines_settings(settings: Settings) -> MlPipelinesSettings:
    """``settings`` as MlPipelinesSettings (its own fields read from the environment)."""
    if isinstance(settings, MlPipelinesSettings):
        return settings
    return MlPipelinesSettings(**settings.model_dump())
