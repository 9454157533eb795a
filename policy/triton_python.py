"""The Triton python-backend model.py, as text (it runs in Triton's stub
interpreter, not here: kept as a string so it is neither imported nor type-checked
with the services)."""

MODEL_PY = '''"""Triton python-backend model: ONNX Runtime on this version's model.onnx.

Copied next to model.onnx by ``onnx_export.write_python_backend`` for the CPU
test Triton (pytriton's tritonserver has only the python backend). Runs in
Triton's stub interpreter, not in the services: it imports nothing of ours.
"""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils  # provided by the Triton stub


class TritonPythonModel:
    def initialize(self, args):
        folder = Path(args["model_repository"]) / args["model_version"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )

    def execute(self, requests):
        responses = []
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, "rows").as_numpy()
            (scores,) = self.session.run(["scores"], {"rows": rows.astype(np.float32)})
            out = pb_utils.Tensor("scores", scores.astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
'''
