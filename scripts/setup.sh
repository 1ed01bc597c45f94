#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv with everything the
# demo and the tests need. Safe to rerun: it does nothing when the inputs are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.ngram-dask-setup
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c "import ngram_dask" 2>/dev/null; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# streaming imports torchvision, which must match torch exactly: constraints.txt pins the pair.
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
echo "$want" > "$stamp"
