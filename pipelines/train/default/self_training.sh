# Sourced by the run scripts. UNLABELLED: the self-training imagery as name:path (relative to
# the data root): every labelled area with its labels dropped, plus the unlabelled scenes.
UNLABELLED="banepa:banepa_np/oam dar_es_salaam:xyz_tiles/dar_es_salaam_tz nairobi:xyz_tiles/nairobi_ke
  vegas:real_unlabeled/spacenet2_vegas_650px_0.3m.tif snow:real_unlabeled/rasterio_cogeo_0.6m_no_buildings.tif"
# `self_training TEACHER_OUT` prints the -o override that turns on self-training from a
# teacher.sh output folder (paths relative to base.yaml's folder, or absolute).
self_training() {
  local t=$1 areas=""
  for entry in $UNLABELLED; do
    areas+="{name: ${entry%%:*}, imagery: ${entry#*:}, probabilities: $t/${entry%%:*}}, "
  done
  echo "self_training={enabled: true, ratio: 0.5, temperature: 2.0, weight: 1.0, unlabelled: [${areas%, }]}"
}
