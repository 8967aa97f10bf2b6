#!/usr/bin/env bash
# Set up (idempotent) and start the main job on the embedded default model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec python -m sgl_jupyter.quickstart "$@"
