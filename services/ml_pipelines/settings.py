"""Settings of the ml_pipelines service (``TIPS_ML_PIPELINES_*``), on top of the mesh's."""

from __future__ import annotations

from pydantic import Field

from kernel.settings import Settings, default_model_repository
from policy import catalog

_DURABLE = r"^[A-Za-z0-9_-]{1,64}$"


class MlPipelinesSettings(Settings):
    """The mesh's settings plus the ml_pipelines service's own knobs."""

    # Triton model repository root (models/<model>/<version>/model.onnx): trained
    # versions are written here, registered artifacts must lie inside it, and
    # promotion rewrites <model>/config.pbtxt. Tests use a temporary directory.
    ml_pipelines_model_repository: str = Field(default_factory=default_model_repository)
    # The tip catalog file whose tip features rebuild candidate rows from logs.
    ml_pipelines_catalog_path: str = str(catalog.DEFAULT_FILE)
    # Durable consumers (tests vary them so parallel runs do not share state).
    ml_pipelines_decisions_durable: str = Field(default="ml-pipelines-decisions", pattern=_DURABLE)
    ml_pipelines_rewards_durable: str = Field(default="ml-pipelines-rewards", pattern=_DURABLE)
    ml_pipelines_exports_durable: str = Field(default="ml-pipelines-exports", pattern=_DURABLE)
    ml_pipelines_erasure_durable: str = Field(default="ml-pipelines-erasure", pattern=_DURABLE)
    # Fewer joined decisions than this make an evaluation INCONCLUSIVE.
    ml_pipelines_min_eval_decisions: int = Field(default=100, ge=1)
    # Most logged decisions one evaluation or training run reads.
    ml_pipelines_max_logged_rows: int = Field(default=200_000, ge=1)
    # Rows per training step: progress and cancellation are checked between steps.
    ml_pipelines_train_chunk: int = Field(default=500, ge=1, le=100_000)
    # Signals per ReplayAllSignals chunk read by feature backfills.
    ml_pipelines_backfill_chunk: int = Field(default=500, ge=1, le=5000)


def ml_pipelines_settings(settings: Settings) -> MlPipelinesSettings:
    """``settings`` as MlPipelinesSettings (its own fields read from the environment)."""
    if isinstance(settings, MlPipelinesSettings):
        return settings
    return MlPipelinesSettings(**settings.model_dump())
