"""The trained change models against the per-date baseline on the LEVIR-CD samples (issue #19).

Each run folder ``RUNS/<name>_s<seed>/`` holds an ``ob-train`` change model
(``pipelines/change/compare.sh``). Every model runs on the 11 LEVIR-CD pairs (256 x 256 px at
0.5 m, the model's own input scale; LEVIR-CD is read from ``../shared/data``, never copied) and
is scored on the buildings that appeared, pooled over the pairs, as ``bench.change_levir`` scores
``ob-change``:

- ``change head``: change logit > 0 where the after-date building head also says building
  (LEVIR-CD marks appeared buildings only);
- ``its per-date heads``: building after and not before, the same network's two building heads
  compared as the zero-learning baseline compares ``ob-infer``'s outputs.

Pixel F1 and object F1 (connected components, IoU >= 0.5) per seed, then mean ± standard
deviation over seeds per model, next to the held-out validation pairs' change F1 that each run
recorded, and the ``ob-change`` baseline's figures (``bench/results/change_levir.json``).

    python -m bench.change_models [--runs runs/change] [--out bench/results/change_models.json]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from open_buildings.evaluation.change_scores import ChangeCounts, count_change
from open_buildings.models.checkpoint import load_checkpoint
from open_buildings.training.change_task import change_logits

NAMES = {"plain": "no attention", "nonlocal": "non-local block", "searched": "searched cell"}


def levir_pairs(root: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(images (6, H, W) float in [0, 1], appeared (H, W) bool)`` for each labelled pair."""
    out = []
    for label in sorted((root / "label").glob("*.png")):
        dates = [np.array(Image.open(root / d / label.name).convert("RGB")) for d in ("A", "B")]
        images = np.concatenate([d.transpose(2, 0, 1) for d in dates]).astype(np.float32) / 255
        out.append((images, np.array(Image.open(label).convert("L")) > 127))
    return out


def score_model(weights: Path, pairs: list) -> dict[str, dict]:
    """Pooled scores of one model's change head and of its per-date heads."""
    model = load_checkpoint(weights)
    head, per_date = ChangeCounts(), ChangeCounts()
    for images, truth in pairs:
        before, after, change = change_logits(model, images[None])[0] > 0
        head += count_change(change & after, truth)
        per_date += count_change(after & ~before, truth)
    return {"change head": head.scores(), "its per-date heads": per_date.scores()}


def _mean_sd(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.3f}"


def main() -> None:
    """Score every run, print the table and write the figures."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default="runs/change")
    p.add_argument("--data", default="../shared/data/multidate/levir_cd_samples")
    p.add_argument("--out", default="bench/results/change_models.json")
    args = p.parse_args()
    pairs = levir_pairs(Path(args.data))
    rows: dict[str, list[dict]] = {}
    for weights in sorted(Path(args.runs).glob("*_s*/weights.safetensors")):
        match = re.fullmatch(r"(.+)_s(\d+)", weights.parent.name)
        if not match or match[1] not in NAMES:
            continue
        history = json.loads((weights.parent / "history.json").read_text())
        val = next(h["val"] for h in reversed(history) if "val" in h)
        scored = score_model(weights, pairs)
        rows.setdefault(match[1], []).append({"seed": int(match[2]), "val": val, **scored})
        print(
            f"{weights.parent.name}: LEVIR pixel F1 "
            f"{scored['change head']['pixel']['f1']:.3f}, objects "
            f"{scored['change head']['object_iou50']['f1']:.3f}; val pairs {val['f1']:.3f}"
        )
    baseline = json.loads(Path("bench/results/change_levir.json").read_text())
    print(
        "\n| model | seeds | held-out pairs: change F1 | LEVIR pixel F1 | LEVIR object F1 |"
        " LEVIR pixel F1, its per-date heads | LEVIR object F1, its per-date heads |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in NAMES:
        runs = rows.get(name, [])
        if not runs:
            continue
        cols = [_mean_sd([r["val"]["f1"] for r in runs])]
        for way in ("change head", "its per-date heads"):
            for kind in ("pixel", "object_iou50"):
                cols.append(_mean_sd([r[way][kind]["f1"] for r in runs]))
        print(
            f"| {NAMES[name]} | {len(runs)} | {cols[0]} | {cols[1]} | {cols[2]} | {cols[3]} |"
            f" {cols[4]} |"
        )
    print(
        f"| per-date baseline (`ob-change`: default model, ob-infer per date) | - | - | "
        f"{baseline['pixel']['f1']:.3f} | {baseline['object_iou50']['f1']:.3f} | | |"
    )
    Path(args.out).write_text(json.dumps({"runs": rows, "pairs": len(pairs)}, indent=1) + "\n")


if __name__ == "__main__":
    main()
