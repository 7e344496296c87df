#!/usr/bin/env bash
# A teacher's soft targets for self-training, made by ob-infer itself: one
# `ob-infer --write-probabilities` run per unlabelled source, over the whole imagery, into
# OUT/<name>/ (probabilities/<tile>.tif on the training grid). ob-train skips the validation
# tiles among them. Unlabelled imagery: every labelled area with its labels dropped, plus the
# unlabelled scenes in the shared data (UNLABELLED in self_training.sh).
#   pipelines/train/default/teacher.sh TEACHER.safetensors OUT [DATA_ROOT]
set -euo pipefail
cd "$(dirname "$0")/../../.."
teacher=$1; out=$2; data=${3:-../shared/data}
mkdir -p "$out"
source pipelines/train/default/self_training.sh
for entry in $UNLABELLED; do
  name=${entry%%:*}; src=$data/${entry#*:}
  .venv/bin/python -c "import sys; from open_buildings.geo.imagery import open_imagery; \
from open_buildings.commands.evaluate_model import write_bbox_region; \
write_bbox_region(open_imagery(sys.argv[1]).bounds_lonlat(), sys.argv[2])" "$src" "$out/$name.geojson"
  .venv/bin/ob-infer "$out/$name.geojson" --imagery "$src" --model "$teacher" --out "$out/$name" \
    --write-probabilities --min-confidence 0 --keep-whole-tiles --no-progress --overwrite
done
