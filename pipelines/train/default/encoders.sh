#!/usr/bin/env bash
# EfficientNet-Lite0, Lite1 and Lite2 (ImageNet init, mixup, the base split) at equal training
# time: the steps are in inverse proportion to each encoder's measured step time on 192 px
# batches of 8 (1.7, 1.9 and 2.0 s on 2 AVX2 cores), about 5 minutes of steps each.
set -euo pipefail
cd "$(dirname "$0")/../../.."
for run in "0 180" "1 160" "2 150"; do
  set -- $run
  .venv/bin/ob-train pipelines/train/default/base.yaml --quiet -o model=unet_efficientnet_lite$1 \
    -o steps=$2 -o out=../../../runs/default/encoders/lite$1 ${EXTRA:-}
done
