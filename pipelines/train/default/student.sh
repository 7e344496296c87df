#!/usr/bin/env bash
# Self-training as in the paper, with the shipped model as the teacher: teacher.sh runs
# `ob-infer --write-probabilities` with models/default over every unlabelled source
# (self_training.sh), then a student with the shipped settings (base.yaml, ImageNet init, mixup)
# learns from the labels and, on 4 unlabelled chips per 8 labelled ones, the teacher's soft
# targets (soft KL at T = 2). 800 steps: the shipped run's validation AP50 had levelled off by
# step 400, and each step here costs about 1.5x (12 chips). Interrupted? Run it again: it resumes.
#   pipelines/train/default/student.sh [SEED] [-o key=value ...]
set -euo pipefail
cd "$(dirname "$0")/../../.."
here=pipelines/train/default
source $here/self_training.sh
seed=${1:-0}; shift || true
teacher=runs/default/teacher_shipped
out=runs/default/student/seed$seed
[ -d $teacher/snow/probabilities ] || $here/teacher.sh models/default/weights.safetensors $teacher
resume=""; [ -d $out/checkpoint ] && resume=--resume
.venv/bin/ob-train $here/base.yaml --quiet $resume -o model=unet_efficientnet_lite1 -o steps=800 \
  -o warmup_steps=50 -o val_every=400 -o threads=1 -o bf16=false -o seed=$seed \
  -o out=../../../$out -o "$(self_training ../../../$teacher)" "$@"
