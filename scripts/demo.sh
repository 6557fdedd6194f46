#!/bin/bash
# Sets up what dvsan's lab needs (scripts/install-deps.sh), then runs the lab demo: boots guests,
# runs station + unit agent + host agents end to end on real LIO and open-iscsi, prints timings.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
export PIP_CACHE_DIR="$PWD/.cache/pip"
bash scripts/install-deps.sh
exec .venv/bin/dvsan-lab demo "$@"
