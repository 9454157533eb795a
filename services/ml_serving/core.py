"""The model repository as ml_serving serves it: which versions exist, which
are loaded (ONNX Runtime sessions), which is each model's default. No gRPC.

Loading reads a version aside and then publishes it with one dict assignment,
so a Score running concurrently sees either the old or the new default, never
a gap (the previous default stays loaded until unloaded).
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort

from kernel.errors import FailedPrecondition, InvalidArgument, NotFound

MAX_ROWS = 1024
INLINE_MAX_ROWS = 256  # smaller batches score inline: cheaper than a thread hop
_SPECIFIC = re.compile(r"specific\s*:?\s*\{\s*versions\s*:\s*\[?\s*([\d,\s]+)\]?")
_ONNX_TYPES = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(int64)": "INT64"}


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str  # KServe name: FP32, FP64, INT64, BYTES
    shape: tuple[int, ...]  # -1 for dynamic


@dataclass(frozen=True)
class LoadedVersion:
    version: str
    path: Path
    session: ort.InferenceSession
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    labels: tuple[str, ...]
    load_time: datetime

    @property
    def width(self) -> int:
        return self.inputs[0].shape[-1]


@dataclass
class ModelEntry:
    name: str
    loaded: dict[str, LoadedVersion] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    default_version: str = ""


def _tensors(args: list[ort.NodeArg]) -> tuple[Tensor, ...]:
    return tuple(
        Tensor(
            a.name,
            _ONNX_TYPES.get(a.type, "BYTES"),
            tuple(d if isinstance(d, int) else -1 for d in a.shape),
        )
        for a in args
    )


def _open(path: Path, version: str) -> LoadedVersion:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    labels = json.loads(meta["output_labels"]) if "output_labels" in meta else []
    return LoadedVersion(
        version=version,
        path=path,
        session=session,
        inputs=_tensors(session.get_inputs()),
        outputs=_tensors(session.get_outputs()),
        labels=tuple(str(x) for x in labels),
        load_time=datetime.now(UTC),
    )


class ModelRegistry:
    """The models of one Triton-layout repository, loaded in process."""

    def __init__(self, repository: Path) -> None:
        self.repository = Path(repository)
        self.models: dict[str, ModelEntry] = {}

    # --- the repository on disk -----------------------------------------------------

    def model_names(self) -> list[str]:
        if not self.repository.is_dir():
            return []
        return sorted(
            p.name for p in self.repository.iterdir() if p.is_dir() and not p.name.startswith(".")
        )

    def versions_on_disk(self, name: str) -> list[str]:
        """Version ids with a model.onnx, highest first."""
        root = self.repository / name
        if not root.is_dir():
            return []
        found = [
            int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / "model.onnx").is_file()
        ]
        return [str(v) for v in sorted(found, reverse=True)]

    def selected_version(self, name: str) -> str:
        """What config.pbtxt's version policy selects (specific), else the highest."""
        present = self.versions_on_disk(name)
        config = self.repository / name / "config.pbtxt"
        if config.is_file():
            match = _SPECIFIC.search(config.read_text())
            if match:
                wanted = [v.strip() for v in match.group(1).split(",") if v.strip()]
                for version in sorted(wanted, key=int, reverse=True):
                    if version in present:
                        return version
        if not present:
            raise NotFound(f"models/{name}", f"model {name!r} has no version in the repository")
        return present[0]

    def _check_name(self, name: str) -> None:
        if not name:
            raise InvalidArgument([("model_name", "required")])
        if name not in self.model_names():
            raise NotFound(f"models/{name}", resource_type="tips.ml_serving.v1.ServedModel")

    # --- loading --------------------------------------------------------------------

    async def load(self, name: str, version: str = "") -> ModelEntry:
        self._check_name(name)
        version = version or self.selected_version(name)
        if version not in self.versions_on_disk(name):
            raise NotFound(f"models/{name}/versions/{version}", resource_type="ServedModelVersion")
        entry = self.models.setdefault(name, ModelEntry(name))
        path = self.repository / name / version / "model.onnx"
        try:
            loaded = await asyncio.to_thread(_open, path, version)
        except Exception as exc:  # a corrupt or unreadable file: recorded, reported
            entry.failed[version] = f"{type(exc).__name__}: {exc}"[:500]
            raise FailedPrecondition(f"loading {name} version {version} failed: {exc}") from None
        entry.failed.pop(version, None)
        entry.loaded = {**entry.loaded, version: loaded}
        entry.default_version = version
        return entry

    def unload(self, name: str, version: str = "") -> ModelEntry:
        self._check_name(name)
        entry = self.models.setdefault(name, ModelEntry(name))
        if not version:
            entry.loaded = {}
            entry.default_version = ""
            return entry
        if version not in entry.loaded:
            raise NotFound(f"models/{name}/versions/{version}", "version is not loaded")
        rest = {v: m for v, m in entry.loaded.items() if v != version}
        if version == entry.default_version:
            if not rest:
                raise FailedPrecondition(
                    f"{name} version {version} is the default and no other version is loaded",
                    reason="DEFAULT_VERSION",
                )
            entry.default_version = max(rest, key=int)
        entry.loaded = rest
        return entry

    async def reload(self, names: list[str] | None = None) -> list[ModelEntry]:
        """Loads what each config selects, switches defaults, unloads the rest."""
        for i, name in enumerate(names or []):
            if name not in self.model_names():
                raise NotFound(
                    f"models/{name}", f"model_names[{i}]: {name!r} is not in the repository"
                )
        result = []
        for name in names or self.model_names():
            if not self.versions_on_disk(name):
                continue
            selected = self.selected_version(name)
            entry = await self.load(name, selected)
            entry.loaded = {selected: entry.loaded[selected]}
            result.append(entry)
        if not names:  # models gone from the repository are dropped
            for gone in set(self.models) - set(self.model_names()):
                del self.models[gone]
        return result

    # --- scoring --------------------------------------------------------------------

    def resolve(self, name: str, version: str = "") -> LoadedVersion:
        self._check_name(name)
        entry = self.models.get(name)
        if version and version not in self.versions_on_disk(name):
            raise NotFound(f"models/{name}/versions/{version}", resource_type="ServedModelVersion")
        chosen = version or (entry.default_version if entry else "")
        loaded = entry.loaded.get(chosen) if entry else None
        if loaded is None:
            what = f"version {version}" if version else "no version"
            raise FailedPrecondition(f"model {name}: {what} is loaded", reason="MODEL_NOT_LOADED")
        return loaded

    @staticmethod
    def check_rows(loaded: LoadedVersion, rows: list[list[float]]) -> np.ndarray:
        if not rows:
            raise InvalidArgument([("rows", "at least one row is required")])
        if len(rows) > MAX_ROWS:
            raise InvalidArgument([("rows", f"at most {MAX_ROWS} rows, got {len(rows)}")])
        for i, row in enumerate(rows):
            if len(row) != loaded.width:
                raise InvalidArgument(
                    [(f"rows[{i}].values", f"expected {loaded.width} values, got {len(row)}")]
                )
        return np.asarray(rows, dtype=np.float32)

    @staticmethod
    def score_sync(loaded: LoadedVersion, data: np.ndarray) -> np.ndarray:
        (out,) = loaded.session.run([loaded.outputs[0].name], {loaded.inputs[0].name: data})
        result = np.asarray(out, dtype=np.float32)
        return result.reshape(len(data), -1)  # [K] -> [K, 1]; [K, M] stays

    async def score(self, loaded: LoadedVersion, data: np.ndarray) -> np.ndarray:
        if len(data) <= INLINE_MAX_ROWS:
            return self.score_sync(loaded, data)
        return await asyncio.to_thread(self.score_sync, loaded, data)
