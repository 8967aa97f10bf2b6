#!/usr/bin/env bash
# GPU entry (`make gpu-test`): run on a CUDA machine, e.g. through the device tool:
#   run(command="bash scripts/gpu_run.sh", carry=[".whl"])
# Installs carried wheels (.whl/, see docs), then runs the GPU-marked tests and the kernel check,
# writing logs and JSON under ${OUT:-artifacts/gpu}.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-artifacts/gpu}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
# kernels/ is sgl_jupyter.kernels once installed; without an install, add the repo root to the package path
python3 - <<'PY'
import os, sys
site = "/tmp/site"
os.makedirs(site, exist_ok=True)
open(os.path.join(site, "sgl_jupyter_kernels.pth"), "w").write("import sgl_jupyter, os; sgl_jupyter.__path__.append(os.path.dirname(os.path.dirname(os.path.abspath(sgl_jupyter.__file__))))\n")
PY
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest -m gpu -q tests 2>&1 | tee "$OUT/gpu_tests.log"
if [ -f scripts/gpu_kernels_check.py ]; then python3 scripts/gpu_kernels_check.py --out "$OUT" 2>&1 | tee "$OUT/kernels.log"; fi
