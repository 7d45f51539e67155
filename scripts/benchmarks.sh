#!/usr/bin/env bash
# Regenerate every benchmark in docs/benchmarks.md on the brain template, in one command:
#   bash scripts/benchmarks.sh [VOLUME]        (hours on 2 CPU cores; run it on an idle machine)
#   bash scripts/benchmarks.sh --dry-run       (print the commands, run nothing)
# How long each part takes is in docs/benchmarks.md, "How to regenerate".
# The rate-distortion table and the ablations (`moec bench`, 2 minutes of training per MoEC cell,
# three seeds) and the quantization table keep each finished cell and skip it on a rerun, so an
# interrupted run loses at most one cell; the entropy-coder (a 256x file, 5 min), speed,
# responsiveness (under a virtual X server), cohort (`moec batch` against `moec compress` on 8
# copies of the chest CT), lazy decoding and ROI runs are redone whole.
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=0
if [ "${1:-}" = "--dry-run" ]; then
    dry_run=1
    shift
fi
VOLUME=${1:-../shared/data/brain_template_mni152_1mm.nii.gz}
SAMPLE=benchmarks/results/tmp/brain_256x.moec  # the file the entropy-coder comparison reads (git-ignored)

COMMANDS=(
    ".venv/bin/moec bench $VOLUME --ratios 128 256 512 1024 4096 --minutes 2 --ablations --seeds 3 --out docs/bench"
    ".venv/bin/python benchmarks/quantization.py --minutes 2"
    ".venv/bin/moec compress $VOLUME -o $SAMPLE --ratio 256 --force"
    ".venv/bin/python benchmarks/entropy_coders.py $SAMPLE"
    ".venv/bin/python benchmarks/speed.py"
    "xvfb-run -a -s '-screen 0 1600x1000x24' .venv/bin/python benchmarks/responsiveness.py --volume ct --minutes 1 --stop-after 40"
    "xvfb-run -a -s '-screen 0 1600x1000x24' .venv/bin/python benchmarks/responsiveness.py --lazy"
    ".venv/bin/python benchmarks/batch.py"
    "xvfb-run -a -s '-screen 0 1600x1000x24' .venv/bin/python benchmarks/lazy_decoding.py --viewer"
    ".venv/bin/python benchmarks/roi.py --steps 1000 --seeds 2"
    ".venv/bin/python benchmarks/classical_strongest.py"
    ".venv/bin/python benchmarks/time_to_quality.py --resume"
    ".venv/bin/python benchmarks/hostile_inputs.py"
)

if ((dry_run)); then
    printf '%s\n' "${COMMANDS[@]}"
    exit 0
fi
[ -f "$VOLUME" ] || { echo "benchmarks: no volume at $VOLUME (give its path as the first argument)" >&2; exit 2; }
bash scripts/setup.sh
mkdir -p "$(dirname "$SAMPLE")"
for command in "${COMMANDS[@]}"; do
    echo "benchmarks: $command" >&2
    eval "$command"
done
rm -f "$SAMPLE"
echo "benchmarks: done; tables in docs/bench/results.md and benchmarks/results/*.json, figures in docs/benchmarks.md" >&2
