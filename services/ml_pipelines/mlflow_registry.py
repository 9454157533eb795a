"""The model registry, in MLflow: registered models, their versions, and the runs behind them.

MLflow is the source of truth for models, versions, their state and the
promoted version (docs/ml-pipelines.md, "Registry"; docs/decisions.md, 36):

- ``models/{model}`` is the registered model ``{model}`` (description; tag
  ``tips.algorithm``); its promoted version is the alias ``champion``;
- ``models/{model}/versions/{n}`` is the MLflow model version tagged
  ``tips.version = n``: ``n`` is the Triton repository's directory number,
  which is what Triton, the recommender and the events name. MLflow numbers
  its versions itself (1, 2, 3, ... per model); the two are equal for the
  versions this service numbers while nothing else writes the model's
  directories, and differ once the recommender's exports (which arrive with
  their own directory number) interleave. The tag is the mapping, never
  MLflow's number;
- a version's state is derived, never stored twice: PROMOTED when
  ``champion`` points at it, ARCHIVED when it was promoted once (tag
  ``tips.promote_time``), else CANDIDATE. The ``tips.state`` tag mirrors it
  for people reading the MLflow UI;
- every version comes from an MLflow run that holds its files
  (``model/model.onnx``, ``model/policy.npz``) as artifacts: the version's
  ``source``. The serving copy stays in the Triton repository
  (``tips.artifact_uri``); a copy pruned from there is restored from the run.

Everything here blocks (HTTP or sqlite): call it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from kernel.errors import NotFound
from services.ml_pipelines.mlflow_runs import MlflowRuns, exists, missing
from tips.ml_pipelines.v1 import model_pb2

log = logging.getLogger(__name__)
S = model_pb2.ModelVersionState

CHAMPION = "champion"  # the alias of the promoted version
ALGORITHM = "tips.algorithm"
VERSION = "tips.version"
STATE = "tips.state"
ARTIFACT = "tips.artifact_uri"
SCHEMA = "tips.feature_schema_version"
TRAINING_RUN = "tips.training_run"
REQUEST = "tips.request_id"
METRICS = "tips.metrics"
PROMOTE_TIME = "tips.promote_time"
EVALUATION = "tips.evaluation"  # the OfflineEvaluation, serialized (base64)
ORIGIN = "tips.origin"  # "export" for the recommender's exports (pruned: prune_exports)
EVAL = "tips.eval."  # readable copies: verdict, baseline, each estimator's numbers
MODEL_DIR = "model"  # the run's artifact folder a version is registered from
_PAGE = 1000


@dataclass(frozen=True)
class ModelRecord:
    model_id: str
    description: str
    algorithm: str
    promoted: int | None  # the Triton version number of the champion
    create_time: datetime
    update_time: datetime


@dataclass(frozen=True)
class VersionRecord:
    model_id: str
    version: int  # the Triton directory number (tag tips.version)
    mlflow_version: str
    state: int
    artifact_uri: str
    feature_schema_version: str
    metrics: dict[str, float]
    evaluation: bytes | None
    training_run: str
    description: str
    request_id: str
    create_time: datetime
    promote_time: datetime | None
    source: str
    run_id: str


@dataclass(frozen=True)
class NewVersionRecord:
    """What registering a version stores (its files are in ``directory``)."""

    model_id: str
    version: int
    directory: Path
    artifact_uri: str
    feature_schema_version: str
    description: str = ""
    metrics: Mapping[str, float] | None = None
    training_run: str = ""
    request_id: str = ""
    origin: str = ""  # "export": the recommender's, kept only while among the newest


def _time(ms: int | None) -> datetime:
    return datetime.fromtimestamp((ms or 0) / 1000, UTC)


def state_name(state: int) -> str:
    return S.Name(state).removeprefix("MODEL_VERSION_STATE_")  # type: ignore[arg-type]


def evaluation_tags(result: model_pb2.OfflineEvaluation) -> dict[str, str]:
    """The evaluation as version tags: the exact message and readable numbers."""
    tags = {
        EVALUATION: base64.b64encode(result.SerializeToString()).decode(),
        EVAL + "verdict": model_pb2.EvaluationVerdict.Name(result.verdict),
        EVAL + "baseline": result.baseline_version,
        EVAL + "decision_count": str(result.decision_count),
        EVAL + "confidence_level": str(result.confidence_level),
        EVAL + "primary_estimator": model_pb2.Estimator.Name(result.primary_estimator),
    }
    for key, value in evaluation_metrics(result).items():
        if "." in key:  # per estimator
            tags[EVAL + key] = repr(value)
    return tags


def evaluation_metrics(result: model_pb2.OfflineEvaluation) -> dict[str, float]:
    """Each estimator's value, interval, lift and its interval; the counts."""
    out = {
        "decision_count": float(result.decision_count),
        "later_pick_count": float(result.later_pick_count),
        "unknown_rank_count": float(result.unknown_rank_count),
    }
    for r in result.results:
        name = model_pb2.Estimator.Name(r.estimator).removeprefix("ESTIMATOR_").lower()
        out |= {
            f"{name}.estimated_reward": r.estimated_reward,
            f"{name}.ci_lower": r.ci_lower,
            f"{name}.ci_upper": r.ci_upper,
        }
        if result.baseline_version:
            out |= {
                f"{name}.baseline_estimated_reward": r.baseline_estimated_reward,
                f"{name}.lift": r.lift,
                f"{name}.lift_ci_lower": r.lift_ci_lower,
                f"{name}.lift_ci_upper": r.lift_ci_upper,
            }
    return out


class MlflowRegistry(MlflowRuns):
    """The registry on one MLflow tracking + registry URI (``TIPS_ML_PIPELINES_MLFLOW_URI``)."""

    # --- models ----------------------------------------------------------------------

    def _model(self, rm: Any) -> ModelRecord:
        champion = rm.aliases.get(CHAMPION)
        promoted, promote_time = None, None
        if champion is not None:
            mv = self.client.get_model_version(rm.name, str(champion))
            promoted = int(mv.tags[VERSION])
            promote_time = mv.tags.get(PROMOTE_TIME)
        update = _time(rm.last_updated_timestamp)
        if promote_time:
            update = max(update, datetime.fromisoformat(promote_time))
        return ModelRecord(
            model_id=rm.name,
            description=rm.description or "",
            algorithm=rm.tags.get(ALGORITHM, ""),
            promoted=promoted,
            create_time=_time(rm.creation_timestamp),
            update_time=update,
        )

    def create_model(self, model_id: str, description: str, algorithm: str) -> ModelRecord | None:
        """The new model, or None when the name is taken."""
        try:
            rm = self.client.create_registered_model(
                model_id, tags={ALGORITHM: algorithm}, description=description
            )
        except Exception as exc:
            if exists(exc):
                return None
            raise
        return self._model(rm)

    def ensure_model(self, model_id: str, description: str, algorithm: str) -> None:
        """Creates the model unless it exists."""
        try:
            self.client.get_registered_model(model_id)
        except Exception as exc:
            if not missing(exc):
                raise
            self.create_model(model_id, description, algorithm)

    def get_model(self, model_id: str) -> ModelRecord:
        try:
            rm = self.client.get_registered_model(model_id)
        except Exception as exc:
            if missing(exc):
                raise NotFound(f"models/{model_id}", resource_type="tips.app/Model") from None
            raise
        if ALGORITHM not in rm.tags:  # another user's model in a shared MLflow
            raise NotFound(f"models/{model_id}", resource_type="tips.app/Model")
        return self._model(rm)

    def list_models(self, after: str, limit: int) -> list[ModelRecord]:
        """This service's models (tagged ``tips.algorithm``) named after ``after``, by name."""
        out: list[ModelRecord] = []
        token = None
        while len(out) < limit:
            page = self.client.search_registered_models(
                max_results=_PAGE, order_by=["name ASC"], page_token=token
            )
            out += [self._model(rm) for rm in page if rm.name > after and ALGORITHM in rm.tags]
            token = page.token
            if not token:
                break
        return out[:limit]

    # --- versions --------------------------------------------------------------------

    def _champion(self, model_id: str) -> str | None:
        rm = self.client.get_registered_model(model_id)
        champion = rm.aliases.get(CHAMPION)
        return None if champion is None else str(champion)

    def _version(self, mv: Any, champion: str | None) -> VersionRecord:
        tags = mv.tags
        promote_time = tags.get(PROMOTE_TIME)
        if champion is not None and str(mv.version) == champion:
            state = S.MODEL_VERSION_STATE_PROMOTED
        elif promote_time:
            state = S.MODEL_VERSION_STATE_ARCHIVED
        else:
            state = S.MODEL_VERSION_STATE_CANDIDATE
        evaluation = tags.get(EVALUATION)
        return VersionRecord(
            model_id=mv.name,
            version=int(tags[VERSION]),
            mlflow_version=str(mv.version),
            state=state,
            artifact_uri=tags.get(ARTIFACT, ""),
            feature_schema_version=tags.get(SCHEMA, ""),
            metrics={k: float(v) for k, v in json.loads(tags.get(METRICS) or "{}").items()},
            evaluation=base64.b64decode(evaluation) if evaluation else None,
            training_run=tags.get(TRAINING_RUN, ""),
            description=mv.description or "",
            request_id=tags.get(REQUEST, ""),
            create_time=_time(mv.creation_timestamp),
            promote_time=datetime.fromisoformat(promote_time) if promote_time else None,
            source=mv.source or "",
            run_id=mv.run_id or "",
        )

    def _search(self, query: str) -> Iterator[Any]:
        token = None
        while True:
            page = self.client.search_model_versions(query, max_results=_PAGE, page_token=token)
            yield from page
            token = page.token
            if not token:
                return

    def versions(self, model_id: str) -> list[VersionRecord]:
        """Every version of the model (registered by this service), newest number first."""
        champion = self._champion(model_id)
        found = [
            self._version(mv, champion)
            for mv in self._search(f"name = '{model_id}'")
            if VERSION in mv.tags
        ]
        return sorted(found, key=lambda v: v.version, reverse=True)

    def _tagged(self, model_id: str, key: str, value: int) -> VersionRecord | None:
        # Only validated ids and numbers go into a filter string (no caller's text).
        found = list(self._search(f"name = '{model_id}' AND tags.`{key}` = '{value}'"))
        if not found:
            return None
        return self._version(found[-1], self._champion(model_id))

    def version(self, model_id: str, version: int) -> VersionRecord:
        found = self._tagged(model_id, VERSION, version)
        if found is None:
            name = f"models/{model_id}/versions/{version}"
            raise NotFound(name, resource_type="tips.app/ModelVersion")
        return found

    def find_version(self, model_id: str, version: int) -> VersionRecord | None:
        return self._tagged(model_id, VERSION, version)

    def find_request(self, model_id: str, request_id: str) -> VersionRecord | None:
        # Matched here, not in the filter string: a request id is the caller's text.
        return next((v for v in self.versions(model_id) if v.request_id == request_id), None)

    def highest(self, model_id: str) -> int:
        """The highest version number registered (0 for none)."""
        return max((v.version for v in self.versions(model_id)), default=0)

    def register(self, new: NewVersionRecord, run_id: str | None = None) -> VersionRecord:
        """A CANDIDATE version from ``run_id`` (a run made for it when None), whose
        artifacts get the version directory's files."""
        own_run = run_id is None
        if run_id is None:
            run_id = self.start_run(
                new.model_id,
                f"register v{new.version}",
                params={"model_version": f"models/{new.model_id}/versions/{new.version}"},
            )
        client = self.client
        client.log_artifacts(run_id, str(new.directory), MODEL_DIR)
        if own_run:
            client.set_terminated(run_id, "FINISHED")
        source = f"{client.get_run(run_id).info.artifact_uri}/{MODEL_DIR}"
        tags = {
            VERSION: str(new.version),
            STATE: state_name(S.MODEL_VERSION_STATE_CANDIDATE),
            ARTIFACT: new.artifact_uri,
            SCHEMA: new.feature_schema_version,
            METRICS: json.dumps(dict(new.metrics or {}), sort_keys=True),
        }
        if new.training_run:
            tags[TRAINING_RUN] = new.training_run
        if new.request_id:
            tags[REQUEST] = new.request_id
        if new.origin:
            tags[ORIGIN] = new.origin
        mv = client.create_model_version(
            new.model_id, source, run_id=run_id, tags=tags, description=new.description or None
        )
        return self._version(mv, self._champion(new.model_id))

    def prune_exports(self, model_id: str, keep: int) -> int:
        """Deletes the recommender's exports beyond the newest ``keep`` that nobody
        evaluated or promoted, with their runs; how many went.

        The recommender exports every few hundred rewards: without this the
        registry grows by hundreds of versions a day, and every lookup that
        lists a model's versions slows down with it.
        """
        champion = self._champion(model_id)
        query = f"name = '{model_id}' AND tags.`{ORIGIN}` = 'export'"
        idle = [
            mv
            for mv in self._search(query)
            if VERSION in mv.tags
            and str(mv.version) != champion
            and PROMOTE_TIME not in mv.tags
            and EVALUATION not in mv.tags
        ]
        idle.sort(key=lambda mv: int(mv.tags[VERSION]), reverse=True)
        for mv in idle[keep:]:
            self.client.delete_model_version(model_id, mv.version)
            if mv.run_id:
                self.client.delete_run(mv.run_id)
        return len(idle[keep:])

    def delete(self, record: VersionRecord) -> None:
        self.client.delete_model_version(record.model_id, record.mlflow_version)

    def set_evaluation(
        self, record: VersionRecord, result: model_pb2.OfflineEvaluation, run_id: str
    ) -> None:
        for key, value in {**evaluation_tags(result), EVAL + "run_id": run_id}.items():
            self.client.set_model_version_tag(record.model_id, record.mlflow_version, key, value)

    def promote(self, record: VersionRecord, previous: VersionRecord | None, now: datetime) -> None:
        """``champion`` moves to ``record``; the state tags follow."""
        client, model = self.client, record.model_id
        client.set_model_version_tag(model, record.mlflow_version, PROMOTE_TIME, now.isoformat())
        client.set_registered_model_alias(model, CHAMPION, record.mlflow_version)
        promoted = state_name(S.MODEL_VERSION_STATE_PROMOTED)
        client.set_model_version_tag(model, record.mlflow_version, STATE, promoted)
        if previous is not None:
            archived = state_name(S.MODEL_VERSION_STATE_ARCHIVED)
            client.set_model_version_tag(model, previous.mlflow_version, STATE, archived)

    def restore(self, record: VersionRecord, into: Path) -> None:
        """Downloads the version's files (its run's ``model/``) into ``into``."""
        from mlflow import artifacts

        artifacts.download_artifacts(
            artifact_uri=record.source, dst_path=str(into), tracking_uri=self.uri
        )

    def log_evaluation(self, record: VersionRecord, result: model_pb2.OfflineEvaluation) -> str:
        """An evaluation run (params, every number as a metric, the result as JSON),
        and the result on the version's tags; the run's id."""
        name = f"models/{record.model_id}/versions/{record.version}"
        window = result.data_window
        run_id = self.start_run(
            record.model_id,
            f"evaluate v{record.version}",
            params={
                "model_version": name,
                "baseline_version": result.baseline_version or "-",
                "primary_estimator": model_pb2.Estimator.Name(result.primary_estimator),
                "confidence_level": result.confidence_level,
                "data_window_start": window.start_time.ToJsonString(),
                "data_window_end": window.end_time.ToJsonString(),
            },
            tags={
                "tips.model_version": name,
                EVAL + "verdict": model_pb2.EvaluationVerdict.Name(result.verdict),
            },
        )
        self.log_metrics(run_id, evaluation_metrics(result))
        self.log_dict(run_id, json_format.MessageToDict(result), "evaluation.json")
        self.end_run(run_id, "FINISHED")
        self.set_evaluation(record, result, run_id)
        return run_id
