#!/usr/bin/env bash
# The default model retrained from ob-chips shards by 2 data-parallel processes (batch 4 each, so
# 8 chips a step as in shipped.sh). Interrupted? Run it again: it resumes from the checkpoint.
#   pipelines/train/default/from_shards.sh [-o key=value ...]
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=runs/default/from_shards
[ -f runs/chips/default/manifest.json ] || .venv/bin/ob-chips pipelines/chips/default.yaml
resume=""; [ -d $out/checkpoint ] && resume=--resume
.venv/bin/ob-train pipelines/train/default/from_shards.yaml --quiet --nproc 2 -o batch_size=4 \
  $resume "$@"
