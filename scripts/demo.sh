#!/usr/bin/env bash
# Set up everything, then open napari on the synthetic slide. With no display, render a screenshot under Xvfb instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
  exec .venv/bin/napari-hires demo "$@"
else
  exec xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/napari-hires demo --screenshot "${SCREENSHOT:-docs/images/demo.png}" "$@"
fi
