#!/usr/bin/env bash
# The best ob-search cell trained in full, against the default decoder, as #18 asks: the shipped
# recipe with weight averaging (pipelines/train/default/base.yaml on Lite1, 1,200 steps, EMA 0.995),
# which is the recipe the default decoder has three seeds of (runs/default/ema_s{0,1,2}; the model
# card's EMA table). One run per seed, side by side, 1 thread each; interrupted runs resume. Each
# model (and the default decoder's, re-scored by today's rule) is then scored on the validation
# blocks as a user gets it (pipelines/eval/val_blocks.sh).
#   pipelines/search/retrain.sh [MODEL] [SEED ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${1:-unet_efficientnet_lite1_pnas}; shift || true
seeds=${*:-0 1 2}
for s in $seeds; do
  out=runs/search/retrain/${model}_s$s
  resume=""; [ -d $out/checkpoint ] && resume=--resume
  [ -f $out/weights.safetensors ] && continue
  .venv/bin/ob-train pipelines/train/default/base.yaml --quiet $resume -o model=$model \
    -o steps=1200 -o warmup_steps=50 -o val_every=400 -o ema.enabled=true -o ema.decay=0.995 \
    -o threads=1 -o seed=$s -o out=../../../$out > runs/search/retrain_${model}_s$s.log 2>&1 &
done
wait
for s in $seeds; do
  for run in runs/search/retrain/${model}_s$s runs/default/ema_s$s; do
    [ -f $run/val_blocks.json ] || pipelines/eval/val_blocks.sh $run/weights.safetensors $run/val_blocks.json
  done
done
