#!/usr/bin/env bash
# Sets up .venv and runs a real edit end to end on the bundled example clip with the embedded
# model, on the CPU. Writes out/demo/ (edited.mp4, side_by_side.mp4, preview.png, frames/, run.json).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} HF_HUB_OFFLINE=1
clip=examples/clips/rolling_ball.mp4
[ -f "$clip" ] || .venv/bin/python examples/make_clips.py
exec .venv/bin/tf run "$clip" --inversion-prompt "a red ball on wood" \
  --prompt "a blue checkered ball on wood" --out out/demo --overwrite "$@"
