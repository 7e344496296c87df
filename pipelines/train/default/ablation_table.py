"""The ablation table (mean ± std over seeds) from the runs ablation.sh wrote.

Each run's figures are its own last validation on the base.yaml blocks (ob-train scores them as
ob-infer would write them): AP50, AP, the F1 of every prediction, and the F1 at the run's
calibrated threshold, which is what ob-infer writes by default (measured on those same blocks).
    .venv/bin/python pipelines/train/default/ablation_table.py [RUNS_DIR]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from open_buildings.models.checkpoint import read_operating_points

ROWS = {
    "1-baseline": "1. baseline (random init)",
    "2-mixup": "2. + mixup",
    "3-selftrain": "3. + self-training (teacher: row 2, seed 0)",
    "4-pretrain": "4. + ImageNet pre-training",
}


def _run(folder: Path) -> dict[str, float]:
    history = json.loads((folder / "history.json").read_text())
    val = next(h["val"] for h in reversed(history) if "val" in h)
    best = read_operating_points(folder / "weights.safetensors")["best_f1"]
    return {"ap50": val["ap50"], "ap": val["ap"], "f1_all": val["f1"], "f1_default": best["f1"]}


def _cell(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f} (1 seed)" if values else "-"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main(root: Path) -> None:
    print("| row | seeds | AP50 | AP | F1, default output | F1, all predictions |")
    print("|---|---|---|---|---|---|")
    for key, name in ROWS.items():
        runs = [_run(f) for f in sorted((root / key).glob("seed*")) if (f / "history.json").exists()]
        cells = [_cell([r[m] for r in runs]) for m in ("ap50", "ap", "f1_default", "f1_all")]
        print(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/default/ablation"))
