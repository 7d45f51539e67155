#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite; napari tests run under a virtual X server
# started by pytest-xvfb. Extra arguments go to pytest; by default every test runs, the slow ones
# (marked `slow`: whole bench runs) included, and `-m "not slow"` leaves those out.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Offscreen Qt has no OpenGL, so napari layers need the xcb platform on Xvfb.
unset QT_QPA_PLATFORM
export OMP_WAIT_POLICY=PASSIVE
exec .venv/bin/python -m pytest "$@"
