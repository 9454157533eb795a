#!/usr/bin/env bash
# Builds the environment a real tritonserver runs from, for the Triton tests and
# for local experiments: a separate venv (nvidia-pytriton pins numpy<2, so it
# stays out of .venv) holding pytriton's bundled tritonserver 2.51 (Python
# backend only) and ONNX Runtime for the python-backend variant of tip_scorer.
#
#   tools/triton_env.sh [VENV_DIR]     default: var/triton-venv (gitignored)
#
# Idempotent: a venv whose marker matches this script's pins is reused.
# Prints the venv path on stdout; progress on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-var/triton-venv}"
PYTHON="${TIPS_TRITON_PYTHON:-python3.11}"
PINS="nvidia-pytriton==0.7.0 onnxruntime>=1.19,<2"
MARKER="$VENV/.tips-triton-installed"

if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$PINS" ]; then
  echo "$VENV"
  exit 0
fi
command -v "$PYTHON" >/dev/null || { echo "triton_env: $PYTHON not found (the stub is built for 3.11)" >&2; exit 2; }
echo "triton_env: building $VENV with $PINS" >&2
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $PINS >&2
# The python backend's stub for 3.11 must sit in backends/python/ next to the server.
TRITON_DIR="$("$VENV/bin/python" -c 'import pathlib, pytriton; print(pathlib.Path(pytriton.__file__).parent / "tritonserver")')"
cp "$TRITON_DIR/python_backend_stubs/3.11/triton_python_backend_stub" "$TRITON_DIR/backends/python/"
echo "$PINS" > "$MARKER"
echo "$VENV"
