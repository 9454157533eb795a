"""Settings of the ml_serving service (``TIPS_ML_SERVING_*``), on top of the mesh's."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from kernel.settings import Settings, SettingsError, default_model_repository


class MlServingSettings(Settings):
    """What ml_serving reads beyond the shared settings."""

    # Triton-layout model repository: <repository>/<model>/<version>/model.onnx.
    ml_serving_model_repository: Path = Field(
        default_factory=lambda: Path(default_model_repository())
    )
    # A Triton server's KServe v2 gRPC address (host:port); empty scores in
    # process with ONNX Runtime. With one set, a failing Triton falls back to
    # ONNX Runtime in process (reported by Score's `runtime`).
    ml_serving_triton_url: str = ""
    ml_serving_triton_timeout_seconds: float = Field(default=1.0, gt=0, le=60)
    # After a Triton failure, seconds before Triton is tried again.
    ml_serving_triton_retry_seconds: float = Field(default=5.0, ge=0, le=3600)


def load_ml_serving_settings(base: Settings) -> MlServingSettings:
    """MlServingSettings from the environment, over the values of ``base``."""
    if isinstance(base, MlServingSettings):
        return base
    try:
        return MlServingSettings(**base.model_dump())
    except Exception as exc:  # pydantic ValidationError: one readable line
        raise SettingsError(f"invalid ml_serving configuration: {exc}") from None
