#!/usr/bin/env bash
# Set up, then run the whole test suite (real Dask, DuckDB, MDS, Parquet; no network but
# the package registries).
set -euo pipefail
cd "$(dirname "$0")/.."
# The serve tests drive Debian's Chromium through Playwright: Playwright's own browser
# download needs hosts a test machine may not reach, the distribution's package installs
# from Debian's mirror. tests/test_slurm.py starts a one-node SLURM (munged, slurmctld,
# slurmd) from Debian's packages. Installed here when missing and this is a root shell with
# apt-get; otherwise the browser tests fail and the SLURM tests are skipped, each saying what
# to install.
packages=()
[ -x /usr/bin/chromium ] || packages+=(chromium)
command -v slurmctld >/dev/null && command -v munged >/dev/null || packages+=(slurm-wlm munge)
if [ ${#packages[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing ${packages[*]} (Debian packages the tests start)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${packages[@]}" >/dev/null
fi
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -p no:cacheprovider --durations=20 "$@"
