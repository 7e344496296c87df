#!/usr/bin/env bash
# Train the four ablation rows in order (row 3 and 4 use row 2's model as their teacher).
# Run after `make install`; the configs find the shared data at ../shared/data (relative to each YAML)
# (or pass -o data_root=/path/to/data through EXTRA). Each row writes runs/ablation/<row>/.
set -euo pipefail
cd "$(dirname "$0")/../../.."
for row in 1-baseline 2-mixup 3-selftrain 4-pretrain; do
  .venv/bin/ob-train "pipelines/train/ablation/$row.yaml" --quiet ${EXTRA:-} "$@"
done
