"""Do ``ob-chips``' stored targets differ from the in-memory ones: targets computed once on the
whole tile and warped with each chip, against targets computed on the augmented chip itself.

``python -m bench.target_warp [--chips 300]`` (needs ``../shared/data``). Nothing is trained.
The in-memory sampler draws chips of the default recipe's training areas (seed 1); each is
compared two ways over its usable pixels:

- *tile vs chip*: ``ob-chips`` computes targets on the whole tile (buildings beyond the chip's
  edge add to its separation weights); in memory they are computed on the chip alone.
- *warped vs after*: the stream warps stored targets with the augmentation (nearest
  neighbour); in memory the instance ids are warped and the targets computed after.

For each: the share of usable pixels whose building or interior target differs, the mean
absolute difference of the loss weights (and their mean), the share of pixels whose weight
differs by more than 0.5, and interior regions that hold more than one building (seeds merged
by the warp; 0 means touching buildings stay separated).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "pipelines" / "train" / "default" / "base.yaml"


def merged_seeds(interior: np.ndarray, instances: np.ndarray) -> int:
    """Connected interior regions that hold more than one building."""
    regions, _ = ndi.label(interior)
    merged = 0
    for label, found in enumerate(ndi.find_objects(regions), start=1):
        if found is None:
            continue
        ids = np.unique(instances[found][regions[found] == label])
        merged += int(np.count_nonzero(ids) > 1)
    return merged


def compare(target_a, weight_a, target_b, weight_b, usable, instances) -> dict[str, float]:
    """One chip's differences between two sets of targets, over its usable pixels."""
    a, b = target_a > 0.5, target_b > 0.5
    dw = np.abs(weight_a - weight_b)[usable]
    return {
        "building differs": float((a[0] != b[0])[usable].mean()),
        "interior differs": float((a[1] != b[1])[usable].mean()),
        "|weight diff|": float(dw.mean()),
        "weight (first)": float(weight_a[usable].mean()),
        "weight (second)": float(weight_b[usable].mean()),
        "weight diff > 0.5": float((dw > 0.5).mean()),
        "merged seeds (first)": float(merged_seeds(a[1], instances)),
        "merged seeds (second)": float(merged_seeds(b[1], instances)),
    }


def main(argv: list[str] | None = None) -> None:
    """Print both comparisons, averaged over the chips."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=300)
    args = parser.parse_args(argv)

    from open_buildings.config import load_config
    from open_buildings.models import heads
    from open_buildings.training import chips as chipping
    from open_buildings.training.batches import chip_spec, held_out_tiles, load_areas
    from open_buildings.training.chip_cut import window
    from open_buildings.training.config import TrainConfig

    cfg = load_config(TrainConfig, CONFIG, [])
    val = load_areas(cfg, cfg.val, labelled=True)
    scenes = load_areas(cfg, cfg.train, labelled=True, held_out=held_out_tiles(cfg.val, val))
    whole = [heads.make_targets(s.instances) for s in scenes]
    pool, spec, transform = chipping.ScenePool(scenes), chip_spec(cfg), chipping.augmenter()
    rows: dict[str, list[dict[str, float]]] = {"tile vs chip": [], "warped vs after": []}
    for i in range(args.chips):
        rng = chipping.rng_for(1, i, 0)
        chip = pool.sample(spec, rng, with_buildings=True)
        index, row, col = chip.origin
        local = heads.make_targets(chip.instances)
        tile_target = window(whole[index].target, row, col, spec.size)
        tile_weight = window(whole[index].weight, row, col, spec.size)
        rows["tile vs chip"].append(
            compare(
                tile_target, tile_weight, local.target, local.weight, chip.usable, chip.instances
            )
        )
        stored = np.concatenate([tile_target, tile_weight[None]])
        moved, warped = chipping.augment(transform, chip, int(rng.integers(2**31 - 1)), stored)
        after = heads.make_targets(moved.instances)
        rows["warped vs after"].append(
            compare(
                warped[:-1], warped[-1], after.target, after.weight, moved.usable, moved.instances
            )
        )
    print(f"{args.chips} chips of {spec.size} px drawn in memory (seed 1), usable pixels only")
    names = list(next(iter(rows.values()))[0])
    print("| comparison | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for label, found in rows.items():
        means = [np.mean([r[n] for r in found]) for n in names]
        print(f"| {label} | " + " | ".join(f"{m:.4f}" for m in means) + " |")


if __name__ == "__main__":
    main()
