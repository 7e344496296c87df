#!/usr/bin/env bash
# The shipped default model is a uniform soup: shipped.sh's model (the base) fine-tuned four times
# (seeds 1-4, 400 steps at lr 5e-4 with cosine decay, everything else as base.yaml), and the mean
# of the four fine-tunes' weights, calibrated on the validation tiles (ob-models soup).
# Interrupted? Run it again: finished fine-tunes are kept, an unfinished one resumes.
#   pipelines/train/default/soup.sh [BASE_WEIGHTS]   (default runs/default/shipped/weights.safetensors)
set -euo pipefail
cd "$(dirname "$0")/../../.."
base=${1:-runs/default/shipped/weights.safetensors}
members=()
for seed in 1 2 3 4; do
  out=runs/default/ft_s$seed; members+=("$out/weights.safetensors")
  [ -f "$out/weights.safetensors" ] && continue
  [ -f "$base" ] || { echo "soup.sh: no base model at $base; run shipped.sh first or pass its weights" >&2; exit 2; }
  resume=""; [ -d "$out/checkpoint" ] && resume=--resume
  .venv/bin/ob-train pipelines/train/default/base.yaml --quiet $resume \
    -o model=unet_efficientnet_lite1 -o init_from=null -o start_from="$(realpath "$base")" -o lr=0.0005 \
    -o steps=400 -o warmup_steps=20 -o val_every=200 -o threads=1 -o seed=$seed \
    -o out=../../../$out
done
rm -f runs/default/soup/weights.safetensors runs/default/soup/weights.safetensors.sha256
.venv/bin/ob-models soup pipelines/train/default/base.yaml "${members[@]}" \
  --out runs/default/soup/weights.safetensors
