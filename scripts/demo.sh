#!/usr/bin/env bash
# Set up, then build the catalog of the embedded demo corpus (no network needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/ngram-dask demo --out demo-output "$@"
