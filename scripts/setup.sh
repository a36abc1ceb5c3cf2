#!/usr/bin/env bash
# Creates .venv and installs videoalign-ray with the right torch build for this machine.
# Without an NVIDIA GPU it installs the CPU build of torch first (torch==2.13.0 is the CPU wheel
# served locally here), so that no package pulls several GB of CUDA wheels.
# Packages are installed with uv (itself installed into .venv by pip): the same resolution as pip,
# ~1 min from an empty uv cache instead of ~2 min on the 2-core CI machine. VIDEOALIGN_PIP=1 installs with pip.
# Usage: scripts/setup.sh [extras]   e.g. scripts/setup.sh dev   or   scripts/setup.sh dev,gpu
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
py="${PYTHON:-python3}"
stamp=".venv/.installed-${extras:-base}"
if [[ -f "$stamp" && "$stamp" -nt pyproject.toml ]]; then exit 0; fi
[[ -x .venv/bin/python ]] || "$py" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip setuptools wheel
if [[ "${VIDEOALIGN_PIP:-0}" != "1" ]] && .venv/bin/python -m pip install --quiet "uv>=0.5"; then
  # uv reads neither pip.conf nor PIP_* variables: pass on a local wheel folder (where the CPU torch lies here)
  if [[ -n "${PIP_FIND_LINKS:-}" && -z "${UV_FIND_LINKS:-}" ]]; then export UV_FIND_LINKS="$PIP_FIND_LINKS"; fi
  # No --compile-bytecode (all ~26,000 files: ~55 s on 2 cores): the imports at the end compile what is used
  pip=(.venv/bin/uv pip install --quiet --python .venv/bin/python)
  no_isolation=(--no-build-isolation-package deepspeed)
else
  pip=(.venv/bin/python -m pip install --quiet)
  no_isolation=(--no-build-isolation)
fi
if ! command -v nvidia-smi >/dev/null 2>&1; then
  # CPU machine: pin the CPU build before anything can ask for a CUDA one.
  # TORCH_SPEC lets a laptop without that wheel name another CPU build (or add --index-url).
  torch_spec=(${TORCH_SPEC:-torch==2.13.0})
else
  torch_spec=(torch)
fi
"${pip[@]}" "${torch_spec[@]}"
# DeepSpeed is a source package whose setup imports torch: build it against the torch just installed
# (build isolation would pull a second, CUDA torch into the build environment).
"${pip[@]}" "${no_isolation[@]}" "${torch_spec[@]}" "deepspeed>=0.16"
spec="."; [[ -n "$extras" ]] && spec=".[${extras}]"
# the torch spec again: uv resolves each install anew and would otherwise be free to pick another torch build
"${pip[@]}" "${torch_spec[@]}" -e "$spec"
# Byte-compile what the jobs and tests import (~6,500 modules, ~30 s in one process) by importing it once with
# .pyc writing on: without .pyc files every process compiles torch, Ray, diffusers... anew where
# PYTHONDONTWRITEBYTECODE is set (CI sets it: the suite ran 1.45x slower). Modules first used later are compiled
# on their first import where the Makefile runs Python (it lets Python write .pyc files).
PYTHONDONTWRITEBYTECODE= .venv/bin/python - >/dev/null 2>&1 <<'EOF' || true
import importlib
for name in ("torch", "deepspeed", "diffusers", "peft", "transformers", "ray.train.torch", "ray.data", "ray.serve",
             "mlflow", "pandas", "pyarrow.dataset", "videoalign_ray.cli", "pytest", "moto", "fastapi", "httpx"):
    try:
        importlib.import_module(name)
    except Exception:
        pass
from diffusers import AutoencoderKLWan, WanTransformer3DModel  # lazy attributes: their modules load here
from transformers import AutoModel, Qwen2VLForConditionalGeneration
EOF
touch "$stamp"
