#!/usr/bin/env bash
# Set up (idempotent) and start the main job: JupyterLab with the sgl_jupyter extension on
# notebooks/quickstart.ipynb at http://127.0.0.1:8888 (--port N, --no-browser).
# --headless executes every notebook instead and writes HTML copies with outputs (paths printed);
# add --quick for the small CI sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec python -m sgl_jupyter.main "$@"
