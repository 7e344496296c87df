"""What the training batches hold, fed from memory and from ``ob-chips`` shards: the same recipe's
first steps, drawn by each path and compared pixel by pixel.

``python -m bench.batch_mix [--steps 150] [--chips runs/chips/default]`` (needs ``../shared/data``
and ``ob-chips pipelines/chips/default.yaml`` first). Nothing is trained: each path's batch
source (``sources.run_data``) draws the steps of seed 0 of the default model's recipe, and every
chip is counted over its usable pixels (loss weight above 0): building and interior shares, the
mean loss weight on building and background pixels, the building pixels' share of the loss
weight, and how many chips hold no building pixel at all.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "memory": ROOT / "pipelines" / "train" / "default" / "base.yaml",
    "shards": ROOT / "pipelines" / "train" / "default" / "from_shards.yaml",
}
RECIPE = ["model=unet_efficientnet_lite1", "steps=1200", "seed=0"]
COLUMNS = {
    "usable": "usable px",
    "building": "building px",
    "interior": "interior px",
    "weight_building": "weight, building px",
    "weight_background": "weight, background px",
    "building_weight_share": "building share of the weight",
    "no_building": "chips without a building px",
}


def chip_figures(target: np.ndarray, weight: np.ndarray) -> dict[str, float]:
    """One chip's figures over its usable pixels (``weight > 0``)."""
    usable = weight > 0
    building = (target[0] > 0.5) & usable
    background = usable & ~building
    return {
        "usable": usable.mean(),
        "building": building.mean(),
        "interior": ((target[1] > 0.5) & usable).mean(),
        "weight_building": weight[building].mean() if building.any() else np.nan,
        "weight_background": weight[background].mean() if background.any() else np.nan,
        "building_weight_share": weight[building].sum() / max(weight.sum(), 1e-9),
        "no_building": float(not building.any()),
    }


def first_batches(config: Path, steps: int, overrides: list[str]) -> Iterator:
    """The first ``steps`` labelled training batches of a config, as ``ob-train`` draws them."""
    from open_buildings.config import load_config
    from open_buildings.training import chips as chipping
    from open_buildings.training.config import TrainConfig
    from open_buildings.training.distributed import ALONE
    from open_buildings.training.sources import run_data

    cfg = load_config(TrainConfig, config, overrides)
    draw = run_data(cfg, ALONE, 0).labelled
    transform = chipping.augmenter()
    for step in range(steps):
        yield draw(step, transform)


def batch_mix(config: Path, steps: int, overrides: list[str]) -> dict[str, float]:
    """Mean figures of the first ``steps`` batches of a config's training batches."""
    rows = []
    for batch in first_batches(config, steps, overrides):
        for target, weight in zip(batch.targets.numpy(), batch.weights.numpy()):
            rows.append(chip_figures(target, weight))
    return {k: float(np.nanmean([r[k] for r in rows])) for k in COLUMNS}


def main(argv: list[str] | None = None) -> None:
    """Print one row per batch source."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--chips", default=str(ROOT / "runs" / "chips" / "default"))
    args = parser.parse_args(argv)
    print(
        f"first {args.steps} steps of seed 0, batch 8; shares of all chip pixels, "
        "loss weights over the usable ones"
    )
    print("| batches from | " + " | ".join(COLUMNS.values()) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for name, config in CONFIGS.items():
        extra = [f"shards={Path(args.chips).resolve()}"] if name == "shards" else []
        figures = batch_mix(config, args.steps, RECIPE + extra)
        cells = [
            f"{v:.3f}" if k.startswith("weight_") else f"{100 * v:.1f}%" for k, v in figures.items()
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
