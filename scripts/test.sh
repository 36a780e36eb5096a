#!/usr/bin/env bash
# Install everything, then run the test suite (what CI runs). Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh .venv
. .venv/bin/activate
python -m pytest -q tests "$@"
