#!/usr/bin/env bash
# The Triton interpreter tests under Triton 3.6, the version on the GPU machines (the kernels are
# developed against a newer Triton; an API drift must fail here, not in a GPU window).
# A separate venv .venv-triton36: CPU-only torch 2.13.0, triton 3.6.x, numpy, pytest; no extension
# build and no install, fastik is used from the source tree. Usage: bash scripts/test_triton36.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
V=.venv-triton36
[ -x $V/bin/python ] || python3 -m venv $V
$V/bin/python -c "import torch" 2>/dev/null || $V/bin/python -m pip install -q "torch==2.13.0"
$V/bin/python -c "import triton, sys; sys.exit(not triton.__version__.startswith('3.6.'))" 2>/dev/null \
  || $V/bin/python -m pip install -q "triton==3.6.*"
# numpy < 2.4: Triton 3.6's interpreter converts 1-element arrays with int(), an error since numpy 2.4
# ("only 0-dimensional arrays can be converted to Python scalars"); compiled kernels are not affected
$V/bin/python -c "import numpy, pytest, xdist, sys; sys.exit(numpy.lib.NumpyVersion(numpy.__version__) >= '2.4.0')" \
  2>/dev/null || $V/bin/python -m pip install -q "numpy<2.4" pytest pytest-xdist
$V/bin/python -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__)"
# tests/conftest.py and tests/fused_helpers.py set TRITON_INTERPRET=1 without CUDA; set here as well, so
# the interpreter is on before anything imports triton whatever the test order. FASTIK_FORCE_FALLBACK:
# never load the tree's fastik._C, built against the main venv's torch, into this torch
# the fused op's sweep over the whole group table is the main suite's; here six groups of it (2D and 3D,
# continuous and finite: the kernels see only their packed sizes)
SOME_GROUPS="so3-3d or O-3d or Cinfv-3d or o2-2d or D4-2d"
TRITON_INTERPRET=1 FASTIK_FORCE_FALLBACK=1 PYTHONPATH=$PWD $V/bin/python -m pytest -q -p no:cacheprovider -n "${FASTIK_TEST_WORKERS:-auto}" \
  tests/test_fused.py tests/test_fused_segmented.py tests/test_layer_triton.py tests/test_fused_gmlp.py \
  -k "not test_any_group_matches_reference or $SOME_GROUPS" "$@"
