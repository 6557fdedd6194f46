#!/bin/bash
# Runs dvsan's whole test suite: installs what it needs (scripts/install-deps.sh), then pytest over
# tests/unit (pure), tests/component (real station on loopback) and tests/lab (real kernels in guests).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
export PIP_CACHE_DIR="$PWD/.cache/pip"
bash scripts/install-deps.sh
exec .venv/bin/python -m pytest tests -q -p no:cacheprovider "$@"
