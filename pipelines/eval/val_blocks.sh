#!/usr/bin/env bash
# Score a model on the validation blocks of pipelines/train/default/base.yaml (whole S2 tiles
# held out in Banepa, Zanzibar and Nairobi; regions in pipelines/eval/val_blocks/) as a user gets
# it: ob-eval-model runs ob-infer with the model's defaults on each block and pools the scores.
#   pipelines/eval/val_blocks.sh MODEL OUT.json [DATA_ROOT] [--tta]
set -euo pipefail
cd "$(dirname "$0")/../.."
model=$1; out=$2; data=${3:-../shared/data}; shift $(( $# < 3 ? $# : 3 ))
blocks=pipelines/eval/val_blocks
.venv/bin/ob-eval-model "$model" --out "$out" "$@" \
  --imagery "$data/banepa_np/oam" --truth "$data/banepa_np/labels.geojson" --region $blocks/banepa.geojson \
  --imagery "$data/xyz_tiles/dar_es_salaam_tz" --truth "$data/xyz_tiles/dar_es_salaam_tz/labels.geojson" --region $blocks/dar_es_salaam.geojson \
  --imagery "$data/xyz_tiles/nairobi_ke" --truth "$data/xyz_tiles/nairobi_ke/labels.geojson" --region $blocks/nairobi.geojson
