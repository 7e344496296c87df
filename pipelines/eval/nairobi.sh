#!/usr/bin/env bash
# Score a model on the held-out Nairobi set exactly as a user would: ob-infer over the imagery's
# footprint, then ob-eval against the OSM labels clipped to that footprint.
#   pipelines/eval/nairobi.sh MODEL(.safetensors or zoo name) OUT_DIR [DATA_ROOT]
set -euo pipefail
cd "$(dirname "$0")/../.."
model=$1; out=$2; data=${3:-../shared/data}
.venv/bin/ob-infer pipelines/eval/nairobi_imagery.geojson --imagery "$data/xyz_tiles/nairobi_ke" \
  --model "$model" --out "$out/footprints"
.venv/bin/ob-eval --pred "$out/footprints" --truth "$data/xyz_tiles/nairobi_ke/labels.geojson" \
  --region pipelines/eval/nairobi_imagery.geojson --out "$out/eval"
