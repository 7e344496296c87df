#!/usr/bin/env bash
# The three leave-one-area-out base models that run.sh fine-tunes from (600 steps each, one thread;
# about 25 minutes each on a 2-core AMD EPYC when the three run side by side). Interrupted? Run it
# again: each resumes from its checkpoint.
#   pipelines/finetune/bases.sh [AREA ...]      (default: banepa dar_es_salaam nairobi)
set -euo pipefail
cd "$(dirname "$0")/../.."
areas=${*:-banepa dar_es_salaam nairobi}
for area in $areas; do
  out=runs/finetune/base_without_$area
  resume=""; [ -d $out/checkpoint ] && resume=--resume
  .venv/bin/ob-train pipelines/finetune/base_without_$area.yaml --quiet $resume > /dev/null &
done
wait
