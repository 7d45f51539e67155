#!/usr/bin/env bash
# Set up (if needed), then the main job on the shipped sample phantom:
#   with a display: napari with the phantom and the MoEC dock widget;
#   without one: the same compression from the command line, then its measurements.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_WAIT_POLICY=PASSIVE
mkdir -p out
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && [ "${MOEC_HEADLESS:-0}" != 1 ]; then
    exec .venv/bin/python -m moec_napari.demo
fi
echo "no display: running the headless command-line demo (MOEC_HEADLESS=0 and a DISPLAY open the viewer)"
.venv/bin/moec sample -o out/phantom.nii.gz --labels out/phantom_tissues.nii.gz --force
.venv/bin/moec compress out/phantom.nii.gz -o out/phantom.moec --ratio 64 --minutes "${MOEC_MINUTES:-1}" --force
.venv/bin/moec decompress out/phantom.moec -o out/phantom_moec.nii.gz --labels out/phantom_experts.nii.gz --force
.venv/bin/moec eval out/phantom.nii.gz out/phantom.moec
