#!/usr/bin/env bash
# Creates (or reuses) a virtual environment and installs fastgan into it, building the
# extension fastgan._C against the installed torch. Usage: bash scripts/install.sh [VENV]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip setuptools wheel
python -m pip install -q "torch==${FASTGAN_TORCH_VERSION:-2.13.0}"
python -m pip install -q -r requirements-dev.txt
MAX_JOBS=${MAX_JOBS:-2} python -m pip install -q --no-build-isolation -e .
python -m fastgan info
