#!/usr/bin/env bash
# Creates .venv and installs videoalign-ray with the right torch build for this machine.
# Without an NVIDIA GPU it installs the CPU build of torch first (torch==2.13.0 is the CPU wheel
# served locally here), so that no package pulls several GB of CUDA wheels.
# Usage: scripts/setup.sh [extras]   e.g. scripts/setup.sh dev   or   scripts/setup.sh dev,gpu
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
py="${PYTHON:-python3}"
stamp=".venv/.installed-${extras:-base}"
if [[ -f "$stamp" && "$stamp" -nt pyproject.toml ]]; then exit 0; fi
[[ -x .venv/bin/python ]] || "$py" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet)
"${pip[@]}" --upgrade pip setuptools wheel
if ! command -v nvidia-smi >/dev/null 2>&1; then
  # CPU machine: pin the CPU build before anything can ask for a CUDA one.
  # TORCH_SPEC lets a laptop without that wheel name another CPU build (or add --index-url).
  "${pip[@]}" ${TORCH_SPEC:-torch==2.13.0}
else
  "${pip[@]}" torch
fi
# DeepSpeed is a source package whose setup imports torch: build it against the torch just installed
# (build isolation would pull a second, CUDA torch into the build environment).
"${pip[@]}" --no-build-isolation "deepspeed>=0.16"
spec="."; [[ -n "$extras" ]] && spec=".[${extras}]"
"${pip[@]}" -e "$spec"
touch "$stamp"
