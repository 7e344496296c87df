"""How mixed the shard stream's batches are: distinct tiles a batch (and a run of steps) draws.

``python -m bench.stream_order [--chips runs/chips/default] [--window 128 512] [--steps 1200]``

For each shuffle window, the labelled stream of seed 0 is planned (no pixels are read) and its
first ``steps`` batches of 8 are counted by tile; the in-memory sampler's independent draws by
building pixels give the reference. A stream that reads one or two shards at a time draws its
batches from fewer tiles than the in-memory path.
"""

from __future__ import annotations

import argparse

import numpy as np

from open_buildings.training.chip_shards import ShardReader, open_chipset
from open_buildings.training.shard_stream import StreamPlan


def distinct(groups: np.ndarray, span: int) -> float:
    """Mean number of distinct values in each ``span`` consecutive rows of ``groups``."""
    return float(
        np.mean([len(set(groups[i : i + span].ravel())) for i in range(0, len(groups), span)])
    )


def main(argv: list[str] | None = None) -> None:
    """Print distinct tiles per batch and per 10 and 50 steps, for each window and i.i.d."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", default="runs/chips/default")
    parser.add_argument("--window", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    chipset = open_chipset(args.chips)
    plans = {
        w: StreamPlan(chipset, "train", seed=0, window=w, empty_share=0.1) for w in args.window
    }
    plan = plans[args.window[0]]  # the shards, building pixels and epoch length: any window's
    reader = ShardReader(chipset)
    tiles = np.concatenate([np.asarray(reader.column(s, "tile_id")) for s in plan.shards])
    print("| draw | tiles a batch | tiles in 10 steps | tiles in 50 steps |")
    print("|---|---|---|---|")
    for window, stream in plans.items():
        rows = [stream.locate(p)[2] for p in range(args.steps * args.batch)]
        drawn = tiles[np.array(rows)].reshape(args.steps, args.batch)
        print(
            f"| stream, window {window} | {distinct(drawn, 1):.2f} | {distinct(drawn, 10):.1f} "
            f"| {distinct(drawn, 50):.1f} |"
        )
    names = np.unique(tiles[plan.has_building])
    weights = np.array([plan.building_weight[tiles == n].sum() for n in names], float)
    rng = np.random.default_rng(0)
    drawn = rng.choice(len(names), (args.steps, args.batch), p=weights / weights.sum())
    print(
        f"| independent, by building pixels (in memory) | {distinct(drawn, 1):.2f} "
        f"| {distinct(drawn, 10):.1f} | {distinct(drawn, 50):.1f} |"
    )
    print(
        f"\n{len(plan.shards)} train shards, {tiles.size} chips, {len(set(tiles))} tiles, "
        f"an epoch of {plan.epoch_length}"
    )


if __name__ == "__main__":
    main()
