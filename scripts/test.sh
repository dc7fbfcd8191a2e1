#!/usr/bin/env bash
# Set up everything, then run the whole test suite (pytest-xvfb starts a virtual screen for the napari tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
