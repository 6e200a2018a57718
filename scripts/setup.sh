#!/usr/bin/env bash
# Set up fastik for development on a fresh machine: a virtual environment in .venv with
# torch (CUDA 13.0 build, so the CUDA extension compiles when nvcc is present), the test and
# escnn extras, and fastik itself installed editable with its C++/CUDA extension built.
# Idempotent: re-running only installs what is missing. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
$VPY -m pip install -q --upgrade pip "setuptools>=77" wheel ninja
# torch: 2.14.1 (CUDA 13.0) matches nvcc 13.0 on our machines; any torch >= 2.4 works for the Python side.
$VPY -c "import torch" 2>/dev/null || $VPY -m pip install -q "torch==${FASTIK_TORCH_VERSION:-2.14.1}"
$VPY -m pip install -q "numpy<2" pytest hypothesis
export MAX_JOBS=${MAX_JOBS:-2}
# the extension is built against the installed torch, hence no build isolation
$VPY -m pip install -q --no-build-isolation -e ".[test,bench]"
$VPY -c "import fastik, fastik.ops.aggregate as a; print('fastik', fastik.__version__, '| extension:', a.has_extension(), '| CUDA kernels:', a.extension_has_cuda())"
