"""MLflow runs of ml_pipelines: one experiment per model, runs with params, metrics
and artifacts (training runs, evaluations, registrations).

The client is made on first use from the tracking URI (``TIPS_ML_PIPELINES_MLFLOW_URI``).
Everything here blocks (HTTP or sqlite): call it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


def missing(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def exists(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") == "RESOURCE_ALREADY_EXISTS"


HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


class MlflowRuns:
    """The runs side of one MLflow tracking URI."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._client: Any = None
        self._lock = threading.Lock()
        self._experiments: dict[str, str] = {}

    @property
    def client(self) -> Any:
        """The MlflowClient, made on first use (a new sqlite file is migrated then, ~2 s)."""
        with self._lock:
            if self._client is None:
                # MLflow's usage telemetry calls out to the internet: never from here.
                os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
                # A server that is away fails a call in about half a minute, not in
                # minutes (the defaults: 7 retries backing off, 120 s timeouts), so
                # the RPC waiting on it answers instead of holding its locks.
                for name, value in HTTP_LIMITS.items():
                    os.environ.setdefault(name, value)
                from mlflow import MlflowClient

                if self.uri.startswith("sqlite:"):
                    Path(urlsplit(self.uri).path[1:]).parent.mkdir(parents=True, exist_ok=True)
                self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
            return self._client

    def open(self) -> None:
        """Connects (and creates a sqlite registry's tables): call once at start."""
        self.client.search_registered_models(max_results=1)

    # --- runs --------------------------------------------------------------------------

    def experiment(self, model_id: str) -> str:
        """The experiment of the model's runs (``ml_pipelines/{model}``), made on first use."""
        name = f"ml_pipelines/{model_id}"
        if name in self._experiments:
            return self._experiments[name]
        client = self.client
        found = client.get_experiment_by_name(name)
        if found is not None:
            experiment_id = str(found.experiment_id)
        else:
            location = None
            if self.uri.startswith("sqlite:"):  # else the server's artifact store
                db = Path(urlsplit(self.uri).path[1:])
                location = (db.parent / "artifacts" / model_id).as_uri()
            try:
                experiment_id = str(client.create_experiment(name, artifact_location=location))
            except Exception as exc:
                if not exists(exc):
                    raise
                experiment_id = str(client.get_experiment_by_name(name).experiment_id)
        self._experiments[name] = experiment_id
        return experiment_id

    def start_run(
        self,
        model_id: str,
        name: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        from mlflow.entities import Param

        client = self.client
        run = client.create_run(self.experiment(model_id), run_name=name, tags=dict(tags or {}))
        run_id: str = run.info.run_id
        if params:
            client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return run_id

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(datetime.now(UTC).timestamp() * 1000)
        self.client.log_batch(
            run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()]
        )

    def log_dict(self, run_id: str, content: dict[str, Any], file: str) -> None:
        self.client.log_dict(run_id, content, file)

    def end_run(self, run_id: str, status: str) -> None:
        """Ends a run: FINISHED, FAILED or KILLED."""
        self.client.set_terminated(run_id, status)
