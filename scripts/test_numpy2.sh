#!/usr/bin/env bash
# A second, minimal environment: CPU-only torch 2.13.0 + numpy >= 2, no escnn, no extension.
# Checks that `import fastik` and the core (groups, layers) work there. Usage: bash scripts/test_numpy2.sh
set -euo pipefail
cd "$(dirname "$0")/.."
V=.venv-np2
[ -x $V/bin/python ] || python3 -m venv $V
$V/bin/python -m pip install -q --upgrade pip
$V/bin/python -c "import torch" 2>/dev/null || $V/bin/python -m pip install -q "torch==2.13.0"
$V/bin/python -m pip install -q "numpy>=2" pytest
# no extension build and no editable install: the package is used from the source tree
FASTIK_FORCE_FALLBACK=1 PYTHONPATH=$PWD $V/bin/python - <<'PY'
import sys, numpy, fastik
assert int(numpy.__version__.split(".")[0]) >= 2, numpy.__version__
assert "escnn" not in sys.modules
print("numpy", numpy.__version__, "| fastik", fastik.__version__)
PY
FASTIK_FORCE_FALLBACK=1 PYTHONPATH=$PWD $V/bin/python -m pytest -q -p no:cacheprovider tests/test_groups.py tests/test_cli.py
