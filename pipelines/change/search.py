"""Random search of the spatiotemporal attention cell on the change task (issue #19).

Each candidate is ``change_unet_lite0_st`` with a random cell: 1-3 operations from
``st_attention.ST_OPS``, each reading the cell's input or an earlier operation, at the deepest
encoder level or at the two deepest. Every candidate trains with ``ob-train`` for the same short
budget (``--steps``, seed 0) on ``pipelines/change/train.yaml`` and is ranked by its change F1
on the fixed held-out validation pairs (never by LEVIR-CD, which is the test). Candidates run
``--jobs`` at a time, one thread each; a killed search resumes (finished candidates are kept,
unfinished ones resume from their checkpoints).

    python pipelines/change/search.py [--candidates 16] [--steps 120] [--out runs/change/search]

Writes ``OUT/history.csv`` (cell, levels, validation figures, minutes) and ``OUT/best.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from open_buildings.models.st_attention import ST_OPS

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "pipelines/change/train.yaml"
LEVELS = ((5,), (4, 5))


def sample_cells(count: int, seed: int) -> list[dict]:
    """``count`` distinct random cells with their levels."""
    rng = np.random.default_rng(seed)
    seen, out = set(), []
    while len(out) < count:
        n = int(rng.integers(1, 4))
        cell = tuple((str(rng.choice(ST_OPS)), int(rng.integers(0, k + 1))) for k in range(n))
        levels = LEVELS[int(rng.integers(len(LEVELS)))]
        if (cell, levels) not in seen:
            seen.add((cell, levels))
            out.append({"cell": [list(p) for p in cell], "cell_levels": list(levels)})
    return out


def overrides(candidate: dict) -> str:
    """The ``model_overrides`` value for ``ob-train -o``."""
    cell = ", ".join(f"[{op}, {src}]" for op, src in candidate["cell"])
    levels = ", ".join(str(v) for v in candidate["cell_levels"])
    return f"model_overrides={{cell: [{cell}], cell_levels: [{levels}]}}"


def run(candidate: dict, folder: Path, steps: int, seed: int) -> dict:
    """Train one candidate (resuming a killed one); return its last validation."""
    if not (folder / "weights.safetensors").exists():
        argv = [str(Path(sys.executable).with_name("ob-train")), str(CONFIG), "--quiet",
                "-o", "model=change_unet_lite0_st", "-o", overrides(candidate),
                "-o", f"steps={steps}", "-o", f"val_every={steps}", "-o", f"seed={seed}",
                "-o", f"checkpoint_every={max(steps // 4, 1)}", "--out", str(folder)]  # fmt: skip
        if (folder / "checkpoint").exists():
            argv.append("--resume")
        began = time.perf_counter()
        with open(folder.with_suffix(".log"), "w") as log:
            subprocess.run(argv, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        (folder / "minutes.txt").write_text(f"{(time.perf_counter() - began) / 60:.2f}\n")
    history = json.loads((folder / "history.json").read_text())
    val = next(h["val"] for h in reversed(history) if "val" in h)
    minutes = float((folder / "minutes.txt").read_text()) if (folder / "minutes.txt").exists() else None
    return {**candidate, **{k: val[k] for k in ("f1", "object_f1", "building_f1")}, "minutes": minutes}


def main() -> None:
    """Run the search and write its history and best candidate."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--candidates", type=int, default=16)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="the cells' draw and every run's seed")
    p.add_argument("--out", default=str(ROOT / "runs/change/search"))
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cells = sample_cells(args.candidates, args.seed)
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda kc: run(kc[1], out / f"c{kc[0]:02d}", args.steps, args.seed),
                             enumerate(cells)))  # fmt: skip
    with open(out / "history.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["candidate", *rows[0]])
        writer.writeheader()
        for k, row in enumerate(rows):
            writer.writerow({"candidate": k, **row, "cell": json.dumps(row["cell"])})
    best = max(range(len(rows)), key=lambda k: rows[k]["f1"])
    (out / "best.json").write_text(json.dumps({"candidate": best, **rows[best]}, indent=1) + "\n")
    for k, row in sorted(enumerate(rows), key=lambda kr: -kr[1]["f1"]):
        print(f"c{k:02d} F1 {row['f1']:.3f} objects {row['object_f1']:.3f} {row['cell']} "
              f"levels {row['cell_levels']}")  # fmt: skip


if __name__ == "__main__":
    main()
