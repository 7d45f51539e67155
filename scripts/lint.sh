#!/usr/bin/env bash
# Set up (if needed) and check the habits CI enforces: ruff (style, imports, common bugs) and
# ruff format, mypy on the codec (every function annotated) and the plugin (pyproject's
# [tool.mypy]), and the import contracts (codec never imports Qt, napari or magicgui; the plugin
# builds on the codec, never the other way). The same checks run from .pre-commit-config.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check codec moec_napari tests benchmarks
.venv/bin/ruff format --check codec moec_napari tests benchmarks
.venv/bin/mypy
.venv/bin/lint-imports
