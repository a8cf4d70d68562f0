#!/usr/bin/env bash
# Runs one deploy test with the deploy venv's Python (scripts/install_deps.sh makes it): a
# missing venv is a failure that says how to get it, not a skip.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
python=$root/.venv-deploy/bin/python
if [ ! -x "$python" ]; then
  echo "FAILED: $python is missing: run scripts/install_deps.sh (it creates .venv-deploy with" \
       "the deploy tools from scripts/requirements-deploy.txt)" >&2
  exit 1
fi
exec "$python" "$@"
