#!/usr/bin/env bash
# The shipped default model: base.yaml (all labelled areas, validation tiles held out, ImageNet
# init, mixup) with the encoder the equal-time comparison picked (encoders.sh), 1,200 steps of 8
# chips of 192 px. Interrupted? Run it again: it resumes from runs/default/shipped/checkpoint.
#   pipelines/train/default/shipped.sh [ENCODER_MODEL] [-o key=value ...]
set -euo pipefail
cd "$(dirname "$0")/../../.."
model=${1:-unet_efficientnet_lite0}; shift || true
out=runs/default/shipped
resume=""; [ -d $out/checkpoint ] && resume=--resume
.venv/bin/ob-train pipelines/train/default/base.yaml --quiet $resume -o model=$model -o steps=1200 \
  -o warmup_steps=50 -o val_every=400 -o out=../../../$out ${EXTRA:-} "$@"
