#!/usr/bin/env bash
# Set up fastik for development on a fresh machine: a virtual environment in .venv with
# torch (CUDA 13.0 build, so the CUDA extension compiles when nvcc is present), the test, bench,
# experiments and escnn extras, and fastik itself installed editable with its C++/CUDA extension built.
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
$VPY -m pip install -q --no-build-isolation -e ".[test,bench,experiments]" "numpy<2"  # numpy<2: qm9pack pulls pandas
# escnn extra (fastik.escnn, tests/test_escnn.py; ≈45 s once): escnn 1.0.11 with numpy<2, plus torch_geometric for
# escnn's own point convolutions. escnn's py3nj dependency is Fortran built from source: get gfortran from apt
# (≈10 s); without apt or root, install escnn without py3nj (escnn then computes SO(3) Clebsch–Gordan
# coefficients numerically; keep scikit-learn out of that venv: escnn hands it np.matrix, which it rejects).
if ! $VPY -c "import escnn, torch_geometric" >/dev/null 2>&1; then
  if ! command -v gfortran >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gfortran \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gfortran; }; } >/dev/null 2>&1 || true
  fi
  if command -v gfortran >/dev/null 2>&1; then
    $VPY -m pip install -q "escnn>=1.0.11" torch_geometric "numpy<2"
  else
    echo "setup: no Fortran compiler: installing escnn without py3nj" >&2
    $VPY -m pip install -q lie_learn pymanopt autograd joblib scipy torch_geometric "numpy<2"
    $VPY -m pip install -q --no-deps "escnn>=1.0.11"
  fi
fi
$VPY -c "import fastik, fastik.ops.aggregate as a; print('fastik', fastik.__version__, '| extension:', a.has_extension(), '| CUDA kernels:', a.extension_has_cuda())"
