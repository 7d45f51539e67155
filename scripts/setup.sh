#!/usr/bin/env bash
# Set up everything MoEC Viewer needs on a fresh Debian machine, idempotently:
#   - the virtual X server and the xcb libraries Qt needs (when missing; needs root or sudo),
#   - a virtual environment in .venv with torch 2.13.0 (CPU build, installed first: any other
#     torch request would pull a multi-GB CUDA build) and the project with its qt, bench, test and lint extras.
# Re-running it is fast: installs are skipped when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-xinerama0
              libxcb-randr0 libxcb-shape0 libxcb-cursor0 libxkbcommon-x11-0 libgl1 libegl1 libgl1-mesa-dri
              libfontconfig1 libdbus-1-3 ffmpeg)

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
fi
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    echo "setup: installing torch 2.13.0 (CPU build)"
    # numpy beside it, so that torch's first import (the check below) does not warn that it is missing.
    "${PIP[@]}" install "torch==2.13.0" "numpy>=1.24" 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/python -c "import torch" >/dev/null
fi
stamp=.venv/.moec-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! .venv/bin/python -c "import codec, moec_napari" >/dev/null 2>&1; then
    echo "setup: installing moec-napari with its qt, bench, test and lint extras"
    "${PIP[@]}" install -e ".[qt,bench,test,lint]" 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/python -c "import codec, moec_napari, napari, PyQt6" >/dev/null
    echo "$want" > "$stamp"
fi
