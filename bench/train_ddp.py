"""What global BatchNorm costs a data-parallel step: ``ob-train --nproc 2`` on the CPU.

``python -m bench.train_ddp [--shards DIR]`` (default: ``runs/chips/default``, the output of
``ob-chips pipelines/chips/default.yaml``) starts 2 gloo ranks, as ``--nproc 2`` does, each
with one thread and a batch of 4 of the shipped recipe's chips (EfficientNet-Lite1 U-Net, 192 px,
mixup), and times training steps of two models in interleaved rounds: one whose BatchNorm
layers all-reduce their statistics over the ranks (``sync_batch_norm: true``, the default) and
one whose ranks keep their own (``false``). Both draw from the same chip stream.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.train_shards import ROOT, _config


def _rank(shards: str, rounds: int, timed: int, warm: int) -> dict[str, float]:
    import torch

    from open_buildings.training import chips as chipping
    from open_buildings.training import distributed
    from open_buildings.training.loop import new_model, train_step
    from open_buildings.training.optim import optimizer_factory
    from open_buildings.training.sources import run_data

    ranks = distributed.from_env()
    torch.set_num_threads(1)
    distributed.start(ranks, torch.device("cpu"))
    cfg = _config(Path(shards)).model_copy(update={"batch_size": 4, "val": []})
    data = run_data(cfg, ranks, 0)
    transform = chipping.augmenter()
    runs = {}
    for name, sync in (("global BatchNorm", True), ("own BatchNorm", False)):
        model = new_model(cfg)
        runs[name] = (model, optimizer_factory(cfg)(model), distributed.wrap(model, ranks, sync))
    walls: dict[str, list[float]] = {name: [] for name in runs}
    step = 0
    for _ in range(rounds):
        for name, (model, optimizer, forward) in runs.items():
            for i in range(warm + timed):
                if i == warm:
                    began = time.perf_counter()
                batch = data.labelled(step, transform)
                train_step(model, optimizer, batch, cfg, step, forward=forward, ranks=ranks)
                step += 1
            walls[name].append((time.perf_counter() - began) / timed)
    distributed.finish(ranks)
    return {name: min(w) for name, w in walls.items()}


def main(argv: list[str] | None = None) -> None:
    """Time both models' steps on 2 ranks and print the table."""
    p = argparse.ArgumentParser(prog="python -m bench.train_ddp")
    p.add_argument("--shards", default=str(ROOT / "runs" / "chips" / "default"))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--timed", type=int, default=6)
    p.add_argument("--warm", type=int, default=2)
    args = p.parse_args(argv)
    if not (Path(args.shards) / "manifest.json").exists():
        raise SystemExit(f"no chips in {args.shards}: run ob-chips pipelines/chips/default.yaml")
    from bench.common import machine
    from open_buildings.training.distributed import launch

    print(machine())
    timing = launch(2, _rank, args.shards, args.rounds, args.timed, args.warm)
    base = timing["own BatchNorm"]
    print(f"\n2 ranks x batch 4, 1 thread each ({args.rounds} interleaved rounds of {args.timed})")
    print("| BatchNorm statistics | s/step | vs own |")
    print("|---|---|---|")
    for name, seconds in timing.items():
        print(f"| {name} | {seconds:.3f} | {seconds / base:.2f}x |")


if __name__ == "__main__":
    main()
