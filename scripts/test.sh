#!/usr/bin/env bash
# Set up (idempotent) and run every test. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${EXTRAS:-dev,cluster} bash scripts/setup.sh  # cluster: ray[serve], so tests/cluster runs
. .venv/bin/activate
set +e
python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "[test] pytest collected no tests: that is a failure" >&2; exit 1; fi
exit "$rc"
