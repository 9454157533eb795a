"""Export the policy's shared part as an ONNX model in a Triton model repository.

The graph maps candidate rows ``rows`` [K, DIM] (float32) to ``scores`` [K]::

    scores = rows @ theta + alpha * sqrt(max(rowsum((rows @ a_inv) * rows), 0))

(``a_inv``: theta's posterior covariance, ``Policy.a_inv``) which is
``Policy.shared_scores``; the per-tip part is added by the policy
(bandit.py). Layout written (Triton's)::

    <repository>/tip_scorer/config.pbtxt          platform "onnxruntime_onnx"
    <repository>/tip_scorer/<version>/model.onnx  version = 1, 2, ...
    <repository>/tip_scorer/<version>/policy.npz  the whole policy (``Policy.state``)

``policy.npz`` holds what the graph does not (the per-tip residuals, the
softmax parameters) and the statistics themselves, so a promoted version can
be served exactly and learned on from where it stands (the recommender's
``Learner.promote``); Triton ignores the extra file.

``write_python_backend`` turns a copy of the repository into the variant the
CPU test Triton serves (``backend: "python"``, model.py running ONNX Runtime
on the same model.onnx): no package ships Triton's ONNX Runtime backend for CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from policy.bandit import ALGORITHM, Policy
from policy.features import ROW_NAMES
from policy.triton_python import MODEL_PY

MODEL_NAME = "tip_scorer"
STATE_FILE = "policy.npz"
ALL_VERSIONS = "all: {}"
# A version serving in some replica holds that replica's lease (a file), renewed
# every snapshot period (30 s) and released when it moves on: pruning skips
# versions with a lease renewed in the last LEASE_SECONDS.
LEASE_FILE = ".serving"
LEASE_SECONDS = 600.0
# A version_policy line as older repositories have it (latest N, or a promotion's pin).
_VERSION_POLICY = re.compile(r"version_policy\s*:\s*\{.*\}\s*$", re.MULTILINE)
INPUT = "rows"
OUTPUT = "scores"
OPSET = 17


def build_model(policy: Policy) -> onnx.ModelProto:
    """The ONNX graph of the policy's current shared statistics."""
    dim = policy.dim
    inits = [
        numpy_helper.from_array(policy.theta.astype(np.float32), "theta"),
        numpy_helper.from_array(policy.a_inv.astype(np.float32), "a_inv"),
        numpy_helper.from_array(np.array(policy.params.alpha, dtype=np.float32), "alpha"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("MatMul", [INPUT, "theta"], ["mean"]),
        helper.make_node("MatMul", [INPUT, "a_inv"], ["proj"]),
        helper.make_node("Mul", ["proj", INPUT], ["quad"]),
        helper.make_node("ReduceSum", ["quad", "axis1"], ["var"], keepdims=0),
        helper.make_node("Max", ["var", "zero"], ["var_pos"]),
        helper.make_node("Sqrt", ["var_pos"], ["sd"]),
        helper.make_node("Mul", ["sd", "alpha"], ["bonus"]),
        helper.make_node("Add", ["mean", "bonus"], [OUTPUT]),
    ]
    graph = helper.make_graph(
        nodes,
        MODEL_NAME,
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["K", dim])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["K"])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="tips-recommender",
    )
    model.ir_version = 8  # readable by ONNX Runtime >= 1.10 (the Triton stub's too)
    helper.set_model_props(
        model,
        {
            "algorithm": ALGORITHM,
            "policy_version": policy.version,
            "dim": str(dim),
            "alpha": repr(policy.params.alpha),
            "feature_names": json.dumps(ROW_NAMES if dim == len(ROW_NAMES) else []),
        },
    )
    onnx.checker.check_model(model)
    return model


def config_pbtxt(dim: int, name: str = MODEL_NAME, backend: str = "onnxruntime") -> str:
    """Triton's config: production ``onnxruntime_onnx``, or the ``python`` backend.

    Every version on disk is loaded (``all``: the repository keeps a few),
    because the recommender asks for the exact version it serves (decision 34);
    nothing pins one.
    """
    runtime = 'platform: "onnxruntime_onnx"' if backend == "onnxruntime" else 'backend: "python"'
    return f"""name: "{name}"
{runtime}
max_batch_size: 0
input [{{ name: "{INPUT}" data_type: TYPE_FP32 dims: [ -1, {dim} ] }}]
output [{{ name: "{OUTPUT}" data_type: TYPE_FP32 dims: [ -1 ] }}]
version_policy: {{ {ALL_VERSIONS} }}
instance_group [{{ kind: KIND_CPU count: 1 }}]
"""


def versions(repository: Path, name: str = MODEL_NAME) -> list[int]:
    """Version numbers present for a model, ascending."""
    root = repository / name
    if not root.is_dir():
        return []
    return sorted(
        int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / "model.onnx").is_file()
    )


def export(
    policy: Policy,
    repository: Path,
    name: str = MODEL_NAME,
    keep: int = 3,
) -> str:
    """Writes the next version of ``name`` and returns it; keeps the last ``keep``
    and those leased (``lease``: serving in some replica, this one included).

    The version directory appears complete or not at all (written aside, then
    renamed), so a scorer reloading at any moment never reads half a file.
    """
    root = repository / name
    present = versions(repository, name)
    version = (present[-1] + 1) if present else 1
    staging = staging_dir(root, str(version))
    onnx.save(build_model(policy), str(staging / "model.onnx"))
    (staging / STATE_FILE).write_bytes(policy.state())
    os.replace(staging, root / str(version))
    ensure_config(root / "config.pbtxt", policy.dim, name)
    for old in present[: max(len(present) + 1 - keep, 0)]:
        if not leased(root / str(old)):
            shutil.rmtree(root / str(old), ignore_errors=True)
    return str(version)


def lease(version_dir: Path, holder: str) -> None:
    """``holder`` (a replica) serves this version: exports by any replica on a shared
    repository leave it in place while the lease is renewed."""
    with contextlib.suppress(OSError):  # gone or read-only: nothing to protect
        (version_dir / f"{LEASE_FILE}.{holder}").touch()


def release(version_dir: Path, holder: str) -> None:
    """``holder`` moved on from this version (other holders' leases stand)."""
    with contextlib.suppress(OSError):
        (version_dir / f"{LEASE_FILE}.{holder}").unlink()


def leased(version_dir: Path) -> bool:
    """Whether some holder renewed its lease on this version lately."""
    fresh = time.time() - LEASE_SECONDS
    for path in version_dir.glob(f"{LEASE_FILE}.*"):
        with contextlib.suppress(OSError):
            if path.stat().st_mtime > fresh:
                return True
    return False


def staging_dir(root: Path, label: str) -> Path:
    """A directory to write a version in aside, beside where it goes (the same
    filesystem, so renaming it into place is atomic)."""
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{label}-", dir=root))
    staging.chmod(0o755)  # mkdtemp makes it private; servers may run as another user
    return staging


def ensure_config(config: Path, dim: int, name: str) -> None:
    """A config for the model, loading every version: written when missing; an
    older version policy (the latest only, a pinned version) is replaced in place,
    so the rest of the file (a test's python backend) stays."""
    if not config.exists():
        text = config_pbtxt(dim, name)
    else:
        current = config.read_text()
        text = _VERSION_POLICY.sub(f"version_policy: {{ {ALL_VERSIONS} }}", current)
        if text == current:
            return
    tmp = config.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, config)


def read_state(repository: Path, name: str, version: str) -> bytes | None:
    """A version's ``policy.npz``; None when it has none (written before it was kept)."""
    path = repository / name / version / STATE_FILE
    return path.read_bytes() if path.is_file() else None


def write_python_backend(repository: Path, name: str = MODEL_NAME) -> None:
    """Rewrites ``name`` in ``repository`` (a copy) for Triton's python backend."""
    root = repository / name
    present = versions(repository, name)
    if not present:
        raise FileNotFoundError(f"{root}: no version with a model.onnx")
    dim = int(
        onnx.load(str(root / str(present[-1]) / "model.onnx"))
        .graph.input[0]
        .type.tensor_type.shape.dim[1]
        .dim_value
    )
    (root / "config.pbtxt").write_text(config_pbtxt(dim, name, backend="python"))
    for version in present:
        (root / str(version) / "model.py").write_text(MODEL_PY)
