#!/usr/bin/env bash
# The ablation of the default model, at a short equal budget (120 steps of 8 chips of 128 px,
# one thread each), 3 seeds per row, on the base.yaml split; each row adds one thing:
#   1-baseline (random init, no mixup) -> 2-mixup -> 3-selftrain (teacher: row 2, seed 0, through
#   teacher.sh) -> 4-pretrain (ImageNet EfficientNet-Lite0 encoder).
# Every run writes runs/default/ablation/<row>/seed<s>/; score them with ablation_table.py.
set -euo pipefail
cd "$(dirname "$0")/../../.."
here=pipelines/train/default
source $here/self_training.sh
runs=runs/default/ablation
common=(-o chip.size=128 -o steps=120 -o warmup_steps=10 -o threads=1 ${EXTRA:-})
train() {  # row seed overrides...
  local row=$1 seed=$2; shift 2
  [ -f $runs/$row/seed$seed/weights.safetensors ] && return 0
  local resume=""; [ -d $runs/$row/seed$seed/checkpoint ] && resume=--resume
  .venv/bin/ob-train $here/base.yaml --quiet $resume "${common[@]}" -o seed=$seed \
    -o out=../../../$runs/$row/seed$seed "$@"
}
for seed in 0 1 2; do
  train 1-baseline $seed -o init_from=null -o mixup.enabled=false
  train 2-mixup $seed -o init_from=null
done
[ -d $runs/teacher/nairobi/probabilities ] || $here/teacher.sh $runs/2-mixup/seed0/weights.safetensors $runs/teacher
for seed in 0 1 2; do
  train 3-selftrain $seed -o init_from=null -o "$(self_training ../../../$runs/teacher)"
  train 4-pretrain $seed -o "$(self_training ../../../$runs/teacher)"
done
