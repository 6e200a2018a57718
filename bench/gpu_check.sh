#!/usr/bin/env bash
# One-shot GPU check, designed for one call of the device tool (< 8 min on an H100 / H200):
#
#   bash bench/gpu_check.sh
#
#   1. build fastik with its CUDA extension      pip install --no-build-isolation --no-deps -e .
#   2. run the CUDA-marked unit tests            pytest -m cuda -q
#   3. benchmark on the GPU                      python -m bench --device cuda, standard workload
#      (so3, E = 1e4, 1e5, 4e5, 1e6), then fastik on the other groups at E = 1e5
#
# Results (JSON, Markdown, PNG, logs) go to $OUT when set (the device tool's
# output folder), else bench/results.  A failing stage is reported and the next
# stage still runs; the exit status is that of the main benchmark.  The GPU
# image has no escnn (see DESIGN.md §7): its rows are skipped with the reason.
#
# Every stage has a timeout derived from one deadline (GPU_CHECK_SECONDS, default
# 450 s after the start), and the benchmark writes its JSON after every row and
# all its files on SIGTERM, so a slow build or test stage shortens the benchmark
# instead of losing it.
#
# Knobs (environment): GPU_CHECK_SECONDS, TORCH_CUDA_ARCH_LIST (default 9.0:
# H100/H200), BENCH_EDGES, BENCH_IMPLS, SKIP_BUILD=1, SKIP_TESTS=1.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
OUTDIR="${OUT:-bench/results}"
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # fastik importable even if the build fails
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
PY="${PYTHON:-python}"

DEADLINE="${GPU_CHECK_SECONDS:-450}"

stage() { printf '\n== %s  [%ds]\n' "$1" "$((SECONDS - START))"; }
left() { echo $((DEADLINE - (SECONDS - START))); }
cap() { local l; l=$(left); [ "$l" -lt "$1" ] && echo "$l" || echo "$1"; }   # min(arg, seconds left)

stage "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi unavailable"
"$PY" - <<'EOF'
import importlib.metadata as md, torch
def v(d):
    try: return md.version(d)
    except md.PackageNotFoundError: return "-"
print(f"torch {torch.__version__} (cuda {torch.version.cuda}, available={torch.cuda.is_available()}), "
      f"triton {v('triton')}, numpy {v('numpy')}, e3nn {v('e3nn')}, escnn {v('escnn')}, "
      f"torch_geometric {v('torch_geometric')}")
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name())
EOF

BUILD_RC=skipped
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  stage "build (pip install --no-build-isolation --no-deps -e .)"
  timeout "$(cap 240)" "$PY" -m pip install --no-build-isolation --no-deps -e . >"$OUTDIR/gpu_check-build.log" 2>&1
  BUILD_RC=$?
  tail -n 5 "$OUTDIR/gpu_check-build.log"
  "$PY" -c "import fastik._C as C; print('fastik._C:', C.__file__)" 2>&1 | tail -n 1
fi

TEST_RC=skipped
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  stage "CUDA tests (pytest -m cuda -q)"
  if "$PY" -c "import pytest" 2>/dev/null; then
    timeout "$(cap $(( $(left) - 200 > 30 ? $(left) - 200 : 30 )))" "$PY" -m pytest -m cuda -q -p no:cacheprovider >"$OUTDIR/gpu_check-pytest.log" 2>&1
    TEST_RC=$?
    tail -n 25 "$OUTDIR/gpu_check-pytest.log"
  else
    echo "pytest not installed: CUDA tests not run"
  fi
fi

BUDGET=$(( $(left) - 75 ))   # leave time for the last row, the plot and the other groups
[ "$BUDGET" -lt 60 ] && BUDGET=60
stage "benchmark: standard workload (so3), run budget ${BUDGET}s"
timeout -k 10 "$((BUDGET + 45))" "$PY" -m bench --device cuda --groups so3 \
  --edges "${BENCH_EDGES:-1e4,1e5,4e5,1e6}" ${BENCH_IMPLS:+--impls "$BENCH_IMPLS"} \
  --repeats 5 --warmup 2 --row-budget 30 --budget "$BUDGET" --out "$OUTDIR"
BENCH_RC=$?

if [ "$(left)" -gt 40 ]; then
  stage "benchmark: fastik on Cinf, O, o3 at E = 1e5"
  timeout -k 5 "$(( $(left) - 5 ))" "$PY" -m bench --device cuda --groups Cinf,O,o3 --edges 1e5 \
    --impls fastik-reference,fastik-triton,fastik-triton-csr --repeats 5 --warmup 2 --row-budget 10 --budget "$(( $(left) - 25 ))" \
    --out "$OUTDIR" --tag groups --no-plot 2>&1 | grep -E '^\[|^\| |^## |error' || true
else
  stage "benchmark: other groups skipped (deadline near)"
fi

stage "done: build=$BUILD_RC tests=$TEST_RC bench=$BENCH_RC; files in $OUTDIR"
ls -l "$OUTDIR"
exit "$BENCH_RC"
