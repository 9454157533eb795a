"""The Triton model repository on disk: artifact checks, new versions.

Layout (``policy.onnx_export``)::

    <repository>/<model>/config.pbtxt
    <repository>/<model>/<version>/model.onnx    (+ policy.npz for trained versions)

Every function here blocks on files: call them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import onnx

from kernel.errors import InvalidArgument
from policy import bandit, features, onnx_export
from policy.onnx_export import INPUT, OUTPUT, STATE_FILE
from services.ml_pipelines.offline import session_for


def artifact_uri(path: Path) -> str:
    return path.resolve().as_uri()


def artifact_path(uri: str, repository: Path, field: str) -> Path:
    """The file ``uri`` (``file://`` URI or path) names; it must lie inside ``repository``."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        raw = unquote(parsed.path)
    elif parsed.scheme == "":
        raw = uri
    else:
        raise InvalidArgument(
            [(field, f"must be a file:// URI or a path, got scheme {parsed.scheme!r}")]
        )
    path = Path(raw)
    if not path.is_absolute():
        path = repository / path
    path = path.resolve()
    root = repository.resolve()
    if root not in path.parents:
        raise InvalidArgument([(field, f"must name a file inside the model repository {root}")])
    if not path.is_file():
        raise InvalidArgument([(field, f"no such file: {path}")])
    return path


def check_model(path: Path, field: str) -> int:
    """Checks ``path`` is a scorer ONNX model (rows [K, DIM] -> scores [K]) that loads; its DIM."""
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:
        raise InvalidArgument([(field, f"not a valid ONNX model: {exc}")]) from None
    inputs, outputs = list(model.graph.input), list(model.graph.output)
    names = {i.name for i in model.graph.initializer}
    inputs = [i for i in inputs if i.name not in names]
    if len(inputs) != 1 or inputs[0].name != INPUT:
        raise InvalidArgument([(field, f"the model must have one input {INPUT!r}")])
    if len(outputs) != 1 or outputs[0].name != OUTPUT:
        raise InvalidArgument([(field, f"the model must have one output {OUTPUT!r}")])
    in_dims = inputs[0].type.tensor_type.shape.dim
    out_dims = outputs[0].type.tensor_type.shape.dim
    if len(in_dims) != 2 or in_dims[1].dim_value != features.DIM:
        raise InvalidArgument(
            [(field, f"input {INPUT!r} must have shape [K, {features.DIM}] (the feature rows)")]
        )
    if len(out_dims) != 1:
        raise InvalidArgument([(field, f"output {OUTPUT!r} must have shape [K]")])
    # Shapes in the graph can lie: score two rows for real.
    try:
        scores = session_for(path).run([OUTPUT], {INPUT: np.zeros((2, features.DIM), np.float32)})[
            0
        ]
    except Exception as exc:
        raise InvalidArgument([(field, f"ONNX Runtime cannot run the model: {exc}")]) from None
    if np.asarray(scores).shape != (2,):
        raise InvalidArgument([(field, f"output {OUTPUT!r} must have shape [K]")])
    return features.DIM


def on_disk_versions(repository: Path, model: str) -> list[int]:
    return onnx_export.versions(repository, model)


def _place(repository: Path, model: str, version: int, fill: Path) -> Path:
    """Renames the staged directory ``fill`` to ``<model>/<version>`` (appears complete)."""
    target = repository / model / str(version)
    if target.exists():
        raise FileExistsError(f"{target} exists")
    os.replace(fill, target)
    onnx_export.ensure_config(repository / model / "config.pbtxt", features.DIM, model)
    return target / "model.onnx"


def _staging(repository: Path, model: str) -> Path:
    return onnx_export.staging_dir(repository / model, "staging")


def copy_in(source: Path, repository: Path, model: str, version: int) -> Path:
    """Copies ``source`` (and its policy.npz, if any) in as ``version``; the new model path."""
    staging = _staging(repository, model)
    shutil.copyfile(source, staging / "model.onnx")
    state = source.parent / STATE_FILE
    if state.is_file():
        shutil.copyfile(state, staging / STATE_FILE)
    return _place(repository, model, version, staging)


def write_trained(policy: bandit.Policy, repository: Path, model: str, version: int) -> Path:
    """Exports ``policy`` as ``version`` (ONNX graph + full statistics); the model path."""
    staging = _staging(repository, model)
    onnx.save(onnx_export.build_model(policy), str(staging / "model.onnx"))
    (staging / STATE_FILE).write_bytes(policy.state())
    return _place(repository, model, version, staging)
