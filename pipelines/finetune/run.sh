#!/usr/bin/env bash
# ob-finetune measured on every labelled area here, each from a base model that never saw it
# (bases.sh: leave-one-area-out; Joplin: the shipped default, which never saw Joplin). Each area's
# test block (regions/<area>_test.geojson, a whole S2 level-14 tile) is left out of fine-tuning
# (--region regions/<area>_finetune.geojson) and scored with ob-eval-model for the base and for
# each fine-tuned seed; table.py pools them. Two runs at a time, one thread each. Finished runs
# are skipped, so run it again after an interruption.
# PROTOCOL=area (runs/finetune/<area>_area) is a user's run over the whole imagery instead: the
# test block's labels are removed, so its tiles are unlabelled imagery that self-training may use
# (its labels are still never seen).
# VARIANT=NAME FINETUNE_ARGS="..." passes more ob-finetune flags, into <area>[_area]_NAME.
#   MINUTES=8 SEEDS="0 1 2" [PROTOCOL=block|area] pipelines/finetune/run.sh [AREA ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
export MINUTES=${MINUTES:-8} DATA=${DATA:-../shared/data} PROTOCOL=${PROTOCOL:-block}
export VARIANT=${VARIANT:-} FINETUNE_ARGS=${FINETUNE_ARGS:-}
seeds=${SEEDS:-0 1 2}
areas=${*:-banepa dar_es_salaam nairobi joplin}

one() {  # AREA SEED: fine-tune (SEED "base": score the base alone) and score on the test block
  local area=$1 seed=$2 imagery labels base
  case $area in
    banepa) imagery=banepa_np/oam; labels=banepa_np/labels.geojson ;;
    dar_es_salaam) imagery=xyz_tiles/dar_es_salaam_tz; labels=$imagery/labels.geojson ;;
    nairobi) imagery=xyz_tiles/nairobi_ke; labels=$imagery/labels.geojson ;;
    joplin) imagery=multidate/joplin_us/pre; labels=multidate/joplin_us/footprints.geojson ;;
  esac
  base=runs/finetune/base_without_$area/weights.safetensors
  [ $area = joplin ] && base=default
  local dir=runs/finetune/$area fit=$DATA/$labels
  local region=(--region pipelines/finetune/regions/${area}_finetune.geojson)
  if [ $PROTOCOL = area ]; then
    dir=runs/finetune/${area}_area fit=runs/finetune/${area}_area/labels.geojson region=()
  fi
  [ -n "$VARIANT" ] && dir=${dir}_$VARIANT
  local model=$base out=$dir/s$seed
  [ $seed = base ] && out=$dir/base
  [ -f $out.test.json ] && return 0
  mkdir -p $dir $(dirname $fit)
  if [ $PROTOCOL = area ] && [ ! -f $fit ]; then  # the labels outside the test block
    .venv/bin/python pipelines/finetune/outside_block.py $DATA/$labels \
      pipelines/finetune/regions/${area}_test.geojson $fit.$seed.tmp && mv $fit.$seed.tmp $fit
  fi
  if [ $seed != base ]; then
    rm -rf $out
    .venv/bin/ob-finetune --imagery $DATA/$imagery --labels $fit "${region[@]}" --base $base \
      --minutes $MINUTES --seed $seed --threads 1 $FINETUNE_ARGS --out $out > $out.log 2>&1
    model=$out
  fi
  .venv/bin/ob-eval-model $model --imagery $DATA/$imagery --truth $DATA/$labels \
    --region pipelines/finetune/regions/${area}_test.geojson --out $out.test.json.tmp >> $out.log 2>&1
  mv $out.test.json.tmp $out.test.json
}
export -f one
for area in $areas; do for seed in base $seeds; do echo $area $seed; done; done |
  xargs -P 2 -L 1 bash -c 'one $0 $1'
.venv/bin/python pipelines/finetune/table.py
