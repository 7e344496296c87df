#!/usr/bin/env bash
# The VTAB-1k table of #17: the EfficientNet-Lite0/1/2 encoders with ImageNet weights, the shipped
# building model's encoder, the in-domain Lite1 encoders of pipelines/pretrain/ when they exist,
# and the random-init floors, on UC Merced (in DATA_DIR) and the building tasks of
# buildings.yaml; ridge protocol, 3 seeds, 160 px scenes, 96 px building chips.
#   pipelines/vtab/run.sh [OUT] [DATA_DIR]      (default: runs/vtab ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-runs/vtab}; data=${2:-../shared/data}
extra=()
for objective in scene simsiam; do
  encoder=runs/pretrain/$objective/encoder.safetensors
  [ -f $encoder ] && extra+=("unet_efficientnet_lite1:$PWD/$encoder")
done
.venv/bin/ob-vtab unet_efficientnet_lite0:imagenet unet_efficientnet_lite1:imagenet \
  unet_efficientnet_lite2:imagenet default "${extra[@]}" --protocol ridge --seeds 3 \
  --data-dir "$data" --buildings pipelines/vtab/buildings.yaml --out "$out"
