#!/usr/bin/env bash
# A teacher's soft targets for self-training, made by ob-infer itself: one
# `ob-infer --write-probabilities` run per unlabelled source, over the whole imagery, into
# OUT/<name>/ (probabilities/<tile>.tif on the training grid). ob-train skips the validation
# tiles among them. Unlabelled imagery: every labelled area with its labels dropped, plus the
# unlabelled scenes in the shared data (SpaceNet-2 Las Vegas, uint16; rasterio's snow/forest tile).
#   pipelines/train/default/teacher.sh TEACHER.safetensors OUT [DATA_ROOT]
set -euo pipefail
cd "$(dirname "$0")/../../.."
teacher=$1; out=$2; data=${3:-../shared/data}
mkdir -p "$out"
for entry in banepa:banepa_np/oam dar_es_salaam:xyz_tiles/dar_es_salaam_tz nairobi:xyz_tiles/nairobi_ke \
    vegas:real_unlabeled/spacenet2_vegas_650px_0.3m.tif snow:real_unlabeled/rasterio_cogeo_0.6m_no_buildings.tif; do
  name=${entry%%:*}; src=$data/${entry#*:}
  .venv/bin/python - "$src" "$out/$name.geojson" <<'PY'
import json, sys
from open_buildings.geo.imagery import open_imagery
w, s, e, n = open_imagery(sys.argv[1]).bounds_lonlat()
ring = [[w, s], [e, s], [e, n], [w, n], [w, s]]
open(sys.argv[2], "w").write(json.dumps({"type": "Polygon", "coordinates": [ring]}))
PY
  .venv/bin/ob-infer "$out/$name.geojson" --imagery "$src" --model "$teacher" --out "$out/$name" \
    --write-probabilities --min-confidence 0 --keep-whole-tiles --no-progress --overwrite
done
