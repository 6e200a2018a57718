#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite on CPU. Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FASTIK_REQUIRE_EXTENSION=1
# -n: one pytest worker per core (pytest-xdist); FASTIK_TEST_WORKERS overrides (0: no workers); --dist loadgroup:
# the tests of one xdist_group (those sharing a module fixture, e.g. the GPU check's dry run) share a worker
.venv/bin/python -m pytest -q -ra -n "${FASTIK_TEST_WORKERS:-auto}" --dist loadgroup "$@"
# the core must also work with numpy >= 2 and a CPU-only torch, without escnn or the extension
bash scripts/test_numpy2.sh
bash scripts/test_triton36.sh  # the Triton interpreter tests under Triton 3.6 (the GPU machines' version)
