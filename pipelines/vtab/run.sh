#!/usr/bin/env bash
# The VTAB-1k table of #17: the EfficientNet-Lite0/1/2 encoders with ImageNet weights, the shipped
# building model's encoder, and their random-init floors, on UC Merced (../shared/data) and the
# building tasks of buildings.yaml, ridge protocol, 3 seeds, 160 px scenes, 96 px building chips.
#   pipelines/vtab/run.sh [OUT] [DATA_DIR]      (default: runs/vtab ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-runs/vtab}; data=${2:-../shared/data}
.venv/bin/ob-vtab unet_efficientnet_lite0:imagenet unet_efficientnet_lite1:imagenet \
  unet_efficientnet_lite2:imagenet default --protocol ridge --seeds 3 --data-dir "$data" \
  --buildings pipelines/vtab/buildings.yaml --out "$out"
