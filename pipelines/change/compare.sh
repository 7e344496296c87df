#!/usr/bin/env bash
# Issue #19's comparison: the random search of the attention cell (pipelines/change/search.py),
# then no attention, a non-local block and the searched cell, each trained in full with 3 seeds
# (pipelines/change/train.yaml, 400 steps, 1 thread each, two runs side by side; interrupted
# runs resume). Score them afterwards with `python -m bench.change_models` (bench/change.md).
#   pipelines/change/compare.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")/../.."
steps=${1:-400}
.venv/bin/python pipelines/change/search.py --candidates 12 --steps 120 --out runs/change/search
best=$(.venv/bin/python -c "
import json; b = json.load(open('runs/change/search/best.json'))
cell = ', '.join(f'[{op}, {src}]' for op, src in b['cell'])
print(f\"model_overrides={{cell: [{cell}], cell_levels: {b['cell_levels']}}}\")")
train() {  # NAME MODEL SEED [OVERRIDE]
  out=runs/change/$1_s$3
  [ -f $out/weights.safetensors ] && return 0
  resume=""; [ -d $out/checkpoint ] && resume=--resume
  .venv/bin/ob-train pipelines/change/train.yaml --quiet $resume -o model=$2 -o seed=$3 \
    -o steps=$steps -o val_every=100 ${4:+-o "$4"} --out $out > runs/change/$1_s$3.log 2>&1
}
jobs=()  # name model seed [override], two at a time
for s in 0 1 2; do
  jobs+=("plain change_unet_lite0 $s" "nonlocal change_unet_lite0_nonlocal $s")
done
for s in 0 1 2; do jobs+=("searched change_unet_lite0_st $s"); done
for ((k = 0; k < ${#jobs[@]}; k += 2)); do
  for j in "${jobs[@]:k:2}"; do
    set -- $j
    if [ $1 = searched ]; then train $1 $2 $3 "$best" & else train $1 $2 $3 & fi
  done
  wait
done
