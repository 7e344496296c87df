#!/usr/bin/env bash
# Neumann et al.'s claim on buildings: encoder init {random, ImageNet, in-domain supervised
# (scene.yaml), in-domain self-supervised (simsiam.yaml)} x label fraction {10%, 25%, 100%} x
# seeds, each trained with pipelines/train/default/base.yaml's recipe (Lite1, mixup) for STEPS
# steps and scored on its validation blocks with pipelines/eval/val_blocks.sh (AP50, F1 of the
# default output). Pre-trains the two encoders first when they are missing. Finished runs are
# skipped, so run it again after an interruption; table.py pools whatever has finished.
#   JOBS=2 STEPS=150 SEEDS="0 1 2" FRACTIONS="0.1 0.25 1.0" INITS="random imagenet scene simsiam" \
#     pipelines/pretrain/label_fraction.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export STEPS=${STEPS:-150}
mkdir -p runs/label_fraction runs/pretrain
for objective in scene simsiam; do
  [ -f runs/pretrain/$objective/encoder.safetensors ] ||
    .venv/bin/ob-pretrain pipelines/pretrain/$objective.yaml --quiet -o threads=1 \
      > runs/pretrain.$objective.log 2>&1 &
done
wait
one() {  # INIT FRACTION SEED
  local init=$1 fraction=$2 seed=$3 from out
  case $init in
    random) from=null ;; imagenet) from=imagenet ;;
    *) from=$PWD/runs/pretrain/$init/encoder.safetensors ;;
  esac
  out=runs/label_fraction/${init}_${fraction}_s$seed
  [ -f $out/val_blocks.json ] && return 0
  rm -rf $out
  .venv/bin/ob-train pipelines/train/default/base.yaml --quiet -o model=unet_efficientnet_lite1 \
    -o init_from=$from -o label_fraction=$fraction -o seed=$seed -o steps=$STEPS \
    -o warmup_steps=20 -o threads=1 --out $out > $out.log 2>&1
  pipelines/eval/val_blocks.sh $out/weights.safetensors $out/val_blocks.json >> $out.log 2>&1
}
export -f one
for seed in ${SEEDS:-0 1 2}; do for fraction in ${FRACTIONS:-0.1 0.25 1.0}; do
  for init in ${INITS:-random imagenet scene simsiam}; do echo $init $fraction $seed; done
done; done | xargs -P "${JOBS:-2}" -L 1 bash -c 'one $0 $1 $2'
.venv/bin/python pipelines/pretrain/table.py
