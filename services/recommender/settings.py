"""Settings of the recommender (``TIPS_RECOMMENDER_*``), on top of the mesh's.

Rewards, the policy model and its runtimes, the catalog file, the daily cap.
"""

from __future__ import annotations

from pydantic import Field

from kernel.settings import Settings, SettingsError, default_model_repository
from policy import catalog
from policy.bandit import MODEL_REFRESH_UPDATES


class RecommenderSettings(Settings):
    """Everything the recommender reads beyond the shared settings."""

    # --- rewards (docs/recommender-hot-path.md argues the values) ------------------
    recommender_reward_done: float = Field(default=1.0, ge=0, le=1)
    recommender_reward_snooze: float = Field(default=0.25, ge=0, le=1)
    recommender_reward_dismiss: float = Field(default=0.0, ge=0, le=1)
    # No reaction this long after a decision: it gets the default reward.
    recommender_reward_wait_seconds: float = Field(default=4 * 3600.0, gt=0)
    recommender_default_reward: float = Field(default=0.0, ge=0, le=1)
    # How often the sweeper looks for decisions past the wait.
    recommender_reward_sweep_seconds: float = Field(default=30.0, gt=0)
    # Replicas fold each other's rewards as RewardAssigned arrives; this often each
    # checks the table for any the feed missed (core/learning.py, "replicas").
    recommender_reward_reconcile_seconds: float = Field(default=10.0, gt=0)
    # A reward transaction older than this has committed or never will: a gap in
    # the reward sequence below such a reward is skipped for good.
    recommender_reward_settle_seconds: float = Field(default=60.0, ge=0)

    # --- the policy model -------------------------------------------------------------
    # Triton model repository root (models/<name>/<version>/model.onnx).
    recommender_model_repository: str = Field(default_factory=default_model_repository)
    recommender_model_name: str = "tip_scorer"
    # KServe v2 gRPC address of a Triton server (host:port); unset: ONNX in process.
    recommender_triton_url: str | None = None
    # How long a new version waits for Triton to load it (its repository poll)
    # before Triton is asked for it anyway (a miss falls back to ONNX in process).
    recommender_triton_load_wait_seconds: float = Field(default=30.0, ge=0)
    # Re-export the ONNX model after this many reward updates (policy.serving, the
    # rule the learning and replay benches run); 0: never by count.
    recommender_model_refresh_updates: int = Field(default=MODEL_REFRESH_UPDATES, ge=0)
    # Also re-export this often (seconds); 0: only by count or on demand.
    recommender_export_interval_seconds: float = Field(default=0.0, ge=0)
    # Snapshot the online policy statistics this often (rewards since are replayed).
    recommender_policy_snapshot_seconds: float = Field(default=30.0, gt=0)
    # Seed of the exploration RNG; unset: from the OS.
    recommender_seed: int | None = None

    # --- catalog and eligibility ------------------------------------------------------
    recommender_catalog_file: str = str(catalog.DEFAULT_FILE)
    # How often a replica checks whether another one changed the catalog.
    recommender_catalog_refresh_seconds: float = Field(default=5.0, gt=0)
    # Distinct catalog tips decided per local day when the profile sets no cap.
    recommender_default_daily_cap: int = Field(default=30, ge=1, le=1000)
    # How long a failed profile lookup (profile down) is trusted before retrying.
    recommender_profile_retry_seconds: float = Field(default=30.0, gt=0)
    recommender_profile_timeout_seconds: float = Field(default=0.5, gt=0)
    # TipDecided relay: wait this long after a wake so one drain carries many
    # decisions' events (a drain per group commit cost more than the decisions).
    recommender_relay_linger_seconds: float = Field(default=0.02, ge=0, le=1)


def load_recommender_settings(base: Settings) -> RecommenderSettings:
    """RecommenderSettings from the environment, over the values of ``base``."""
    if isinstance(base, RecommenderSettings):
        return base
    try:
        return RecommenderSettings(**base.model_dump())
    except Exception as exc:  # pydantic ValidationError: one readable line
        raise SettingsError(f"invalid recommender configuration: {exc}") from None


__all__ = ["RecommenderSettings", "load_recommender_settings"]
