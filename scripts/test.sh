#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite on CPU. Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FASTIK_REQUIRE_EXTENSION=1
.venv/bin/python -m pytest -q -ra "$@"
