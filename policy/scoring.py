"""Scoring candidate rows with the exported model: one interface, two runtimes.

``OnnxScorer`` runs ONNX Runtime in this process (the default); ``TritonScorer``
calls a Triton server over KServe v2 gRPC (``tritonclient.grpc.aio``); both
read the same ``model.onnx``. ``FallbackScorer`` scores with Triton and, when
it is unreachable, in process, and says so (``using_fallback``, ``reason``,
``fallbacks``) for health details and metrics.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import onnxruntime as ort

from policy.onnx_export import INPUT, MODEL_NAME, OUTPUT, versions

if TYPE_CHECKING:
    from tritonclient.grpc.aio import InferenceServerClient  # type: ignore[import-untyped]

# Batches up to this many rows score inline: ~60 us (K=1) to ~0.5 ms (K=64) of
# CPU, less than a hop to a worker thread costs. Larger ones go to a thread.
INLINE_MAX_ROWS = 256


class Scorer(Protocol):
    """Scores rows [K, DIM] (float) to scores [K] with the current model version."""

    @property
    def model_version(self) -> str: ...

    async def score(self, rows: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class _Loaded:
    version: str
    session: ort.InferenceSession
    policy_version: str


def session_options() -> ort.SessionOptions:
    """How every scorer session runs (policy.serving's in-memory one too)."""
    options = ort.SessionOptions()
    # One thread per session: the services run many small batches concurrently.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return options


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])


class OnnxScorer:
    """ONNX Runtime in process over ``<repository>/<name>/<version>/model.onnx``."""

    def __init__(self, repository: Path, name: str = MODEL_NAME, version: str | None = None):
        self.repository = Path(repository)
        self.name = name
        self._loaded = self._load(version)

    def _load(self, version: str | None) -> _Loaded:
        present = versions(self.repository, self.name)
        if version is None:
            if not present:
                raise FileNotFoundError(f"{self.repository / self.name}: no model version")
            version = str(present[-1])
        path = self.repository / self.name / version / "model.onnx"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such model version")
        session = _session(path)
        meta = session.get_modelmeta().custom_metadata_map
        return _Loaded(version, session, meta.get("policy_version", ""))

    @property
    def model_version(self) -> str:
        return self._loaded.version

    @property
    def policy_version(self) -> str:
        """The policy statistics the loaded model was exported from."""
        return self._loaded.policy_version

    async def reload(self, version: str | None = None) -> str:
        """Loads ``version`` (default: the highest) aside, then swaps it in.

        In-flight ``score`` calls keep the session they started with; a failed
        load leaves the current model serving and raises.
        """
        loaded = await self.prepare(version)
        self.use(loaded)
        return loaded.version

    async def prepare(self, version: str | None = None) -> _Loaded:
        """``version`` loaded aside (a failed load raises, nothing changes)."""
        return await asyncio.to_thread(self._load, version)

    def use(self, loaded: _Loaded) -> None:
        """Score with a prepared version from now on (one reference assignment:
        atomic for readers)."""
        self._loaded = loaded

    @staticmethod
    def width(loaded: _Loaded) -> int | None:
        """The row width a prepared version takes (None: not fixed in the graph)."""
        width = loaded.session.get_inputs()[0].shape[-1]
        return width if isinstance(width, int) else None

    def score_sync(self, rows: np.ndarray) -> np.ndarray:
        loaded = self._loaded
        (scores,) = loaded.session.run([OUTPUT], {INPUT: np.asarray(rows, dtype=np.float32)})
        return np.asarray(scores, dtype=np.float64)

    async def score(self, rows: np.ndarray) -> np.ndarray:
        if len(rows) <= INLINE_MAX_ROWS:
            return self.score_sync(rows)
        return await asyncio.to_thread(self.score_sync, rows)


class TritonScorer:
    """A Triton server over KServe v2 gRPC (``tritonclient.grpc.aio``)."""

    def __init__(
        self,
        url: str,
        name: str = MODEL_NAME,
        version: str = "",
        timeout_s: float = 1.0,
        input_name: str = INPUT,
        output_name: str = OUTPUT,
    ) -> None:
        from tritonclient.grpc.aio import InferenceServerClient

        self.url = url
        self.name = name
        self.version = version
        self.timeout_s = timeout_s
        self.input_name = input_name
        self.output_name = output_name
        self._client: InferenceServerClient = InferenceServerClient(url)
        self._model_version = version

    @property
    def model_version(self) -> str:
        return self._model_version

    async def score(self, rows: np.ndarray) -> np.ndarray:
        from tritonclient.grpc import (  # type: ignore[import-untyped]
            InferInput,
            InferRequestedOutput,
        )

        data = np.ascontiguousarray(rows, dtype=np.float32)
        tensor = InferInput(self.input_name, list(data.shape), "FP32")
        tensor.set_data_from_numpy(data)
        result = await self._client.infer(
            self.name,
            [tensor],
            model_version=self.version,
            outputs=[InferRequestedOutput(self.output_name)],
            client_timeout=self.timeout_s,
        )
        self._model_version = str(result.get_response().model_version)
        scores = result.as_numpy(self.output_name)
        if scores is None:
            raise RuntimeError(f"triton {self.url}: no {self.output_name!r} in the response")
        return np.asarray(scores, dtype=np.float64)

    async def ready(self, version: str | None = None) -> bool:
        """Whether Triton has ``version`` (default: the one asked for) loaded."""
        try:
            return bool(
                await self._client.is_model_ready(
                    self.name, self.version if version is None else version
                )
            )
        except Exception:  # any transport error means "not ready"
            return False

    async def close(self) -> None:
        await self._client.close()


class FallbackScorer:
    """Triton first; ONNX Runtime in process when Triton fails, reported.

    After a failure Triton is skipped for ``retry_after_s`` (so requests do not
    each pay its timeout), then tried again; a success clears the flag.
    """

    def __init__(self, primary: Scorer, fallback: Scorer, retry_after_s: float = 5.0) -> None:
        self.primary = primary
        self.fallback = fallback
        self.retry_after_s = retry_after_s
        self.using_fallback = False
        self.reason = ""
        self.fallbacks = 0  # batches scored by the fallback: a counter for metrics
        self._retry_at = 0.0
        self._last: Scorer = primary

    @property
    def model_version(self) -> str:
        return self._last.model_version

    def health(self) -> dict[str, Any]:
        """Health details: which runtime scores, and why not Triton."""
        return {
            "scoring_runtime": "onnxruntime" if self.using_fallback else "triton",
            "using_fallback": self.using_fallback,
            "reason": self.reason,
            "fallbacks": self.fallbacks,
        }

    async def score(self, rows: np.ndarray) -> np.ndarray:
        if not self.using_fallback or time.monotonic() >= self._retry_at:
            try:
                scores = await self.primary.score(rows)
            except Exception as exc:  # unreachable, timeout, server error: fall back
                self.using_fallback = True
                self.reason = f"{type(exc).__name__}: {exc}"[:300]
                self._retry_at = time.monotonic() + self.retry_after_s
            else:
                self.using_fallback = False
                self.reason = ""
                self._last = self.primary
                return scores
        self.fallbacks += 1
        self._last = self.fallback
        return await self.fallback.score(rows)
