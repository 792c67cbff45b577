#!/usr/bin/env bash
# Create .venv (if missing) and install megastack with its pinned dependencies.
#   CPU machines: torch==2.13.0 (a CPU build). With an NVIDIA GPU (nvidia-smi works), the torch
#   already in the environment is kept, or TORCH_SPEC (default "torch==2.13.0") is installed.
# Idempotent: rerunning only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip setuptools wheel
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    "${PIP[@]}" install "${TORCH_SPEC:-torch==2.13.0}"
fi
# No build isolation: setup.py must see the installed torch to decide on the CUDA kernels.
"${PIP[@]}" install --no-build-isolation -e ".[test,plot]"
echo "megastack installed in $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")'))"
