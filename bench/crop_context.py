"""How much of each training crop shows imagery that carries no loss (the tile's margin beyond
its core), fed from memory and from ``ob-chips`` shards.

``python -m bench.crop_context [--steps 100] [--chips DIR ...]`` (needs ``../shared/data`` and
the chip folders first). Nothing is trained: each path draws the first steps of seed 0 of the
default recipe, as ``bench.batch_mix`` does, with the colour augmentation left out (it would lift
the zero padding beyond the imagery to non-zero values), and counts the pixels that hold imagery
but no loss weight. The in-memory sampler's crops may reach past the core into the margin around
a building at the core's edge; a stored chip reaches only ``chip.context`` px past the core's
bounding box.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bench.batch_mix import CONFIGS, RECIPE, ROOT, first_batches


def geometric_only() -> None:
    """Make ``chips.augmenter`` (which both paths call) leave out its colour transforms."""
    import albumentations as A  # noqa: N812

    from open_buildings.training import chips as chipping

    full = chipping.augmenter

    def augmenter(*args, **kwargs) -> A.Compose:
        colour = (A.RandomBrightnessContrast, A.RandomGamma)
        kept = [t for t in full(*args, **kwargs).transforms if not isinstance(t, colour)]
        return A.Compose(kept)

    chipping.augmenter = augmenter


def margin_shares(config: Path, steps: int, overrides: list[str]) -> np.ndarray:
    """Each drawn crop's share of pixels with imagery and no loss weight."""
    shares = []
    for batch in first_batches(config, steps, overrides):
        images, weights = batch.images.numpy(), batch.weights.numpy()
        shares.append(((images.max(axis=1) > 0) & (weights == 0)).mean(axis=(1, 2)))
    return np.concatenate(shares)


def main(argv: list[str] | None = None) -> None:
    """Print one row per batch source."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--chips", nargs="+", default=[str(ROOT / "runs" / "chips" / "default")])
    args = parser.parse_args(argv)
    geometric_only()
    print(f"first {args.steps} steps of seed 0, batch 8, colour augmentation off")
    print("| batches from | crop px with imagery and no loss | crops with more than 1% of them |")
    print("|---|---|---|")
    sources = [("memory", CONFIGS["memory"], [])] + [
        (f"shards {chips}", CONFIGS["shards"], [f"shards={Path(chips).resolve()}"])
        for chips in args.chips
    ]
    for name, config, extra in sources:
        shares = margin_shares(config, args.steps, RECIPE + extra)
        print(f"| {name} | {shares.mean():.2%} | {(shares > 0.01).mean():.1%} |")


if __name__ == "__main__":
    main()
