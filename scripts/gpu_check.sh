#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py; docs/gpu.md has the measured table). On a borrowed GPU machine that has
# torch, transformers and peft but not diffusers: wheels carried in .wheels/ (pip download --no-deps -d .wheels
# diffusers ftfy) are installed first, without the network. Extra arguments go to the script (--dry-run: tiny
# sizes on CPU, as CI runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
if [ -d .wheels ] && ! "$PY" -c "import diffusers" 2>/dev/null; then
  "$PY" -m pip install --quiet --no-deps --no-index .wheels/*.whl
fi
exec "$PY" scripts/gpu_check.py "$@"
