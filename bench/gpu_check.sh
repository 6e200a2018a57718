#!/usr/bin/env bash
# The GPU evidence run, staged under one deadline (driver: bench/gpu_check.py; see bench/README.md):
#
#   bash bench/gpu_check.sh                  # GPU machine: stages a-f, default deadline 480 s
#   bash bench/gpu_check.sh --dry-run        # CPU rehearsal (tiny sizes, Triton interpreter), as CI runs it
#   bash bench/gpu_check.sh --deadline 300 --stages b,c,d --skip-build
#
# Output: $OUT when set (the device tool's folder), else bench/results. The interpreter is
# ${PYTHON:-python3}; every argument is passed on (python -m bench.gpu_check --help).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # fastik importable from the tree even if the build fails
exec "${PYTHON:-python3}" -m bench.gpu_check "$@"
