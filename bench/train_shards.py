"""Training from ob-chips shards against the in-memory path, on the default model's data.

``python -m bench.train_shards`` (needs ``../shared/data``) measures, in one run:

1. ``ob-chips`` throughput: the default areas (``pipelines/chips/default.yaml``) cut at stride
   64 (1x) and at stride 32 (4x the chips), chips and tiles per second of wall time.
2. ``ob-train`` step throughput: the shipped recipe's model (EfficientNet-Lite1 U-Net, batch 8
   of 192 px chips, mixup) fed from memory, from shards in the training process and from shards
   through one DataLoader worker; interleaved rounds of timed steps after warm-up steps, one
   thread. Also the batch alone (no model), from memory and from shards.
3. Peak memory (RSS of a fresh process that sets up the run's data and draws 40 batches) from
   memory (the three training areas) and from shards at 1x and 4x.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHIPS_CONFIG = ROOT / "pipelines" / "chips" / "default.yaml"
TRAIN_CONFIG = ROOT / "pipelines" / "train" / "default" / "base.yaml"


def cut(out: Path, stride: int) -> dict:
    """Run ob-chips at ``stride``; return chips, tiles and seconds."""
    from open_buildings.commands import chips as ob_chips

    began = time.perf_counter()
    code = ob_chips.main([str(CHIPS_CONFIG), "--out", str(out), "-o", f"chip.stride={stride}"])
    seconds = time.perf_counter() - began
    if code:
        raise SystemExit(f"ob-chips failed ({code})")
    m = json.loads((out / "manifest.json").read_text())
    chips = sum(s["chips"] for s in m["splits"].values())
    tiles = sum(s["tiles"] for s in m["splits"].values())
    size = sum(s["bytes"] for s in m["shards"])
    return {"stride": stride, "chips": chips, "tiles": tiles, "seconds": seconds, "bytes": size}


def _config(shards: Path | None, workers: int = 0):
    from open_buildings.config import load_config
    from open_buildings.training.config import TrainConfig

    overrides = ["model=unet_efficientnet_lite1", "init_from=null", "threads=1", "steps=100000"]
    if shards is not None:
        overrides += ["train=[]", f"shards={shards}", f"stream={{window: 128, workers: {workers}}}"]
    return load_config(TrainConfig, TRAIN_CONFIG, overrides)


def _source(shards: Path | None, workers: int = 0):
    from open_buildings.training.distributed import ALONE
    from open_buildings.training.sources import run_data

    cfg = _config(shards, workers)
    return cfg, run_data(cfg.model_copy(update={"val": []}), ALONE, 0)


def steps(shards: Path, rounds: int, timed: int, warm: int) -> dict:
    """Seconds per training step and per batch, from memory and from shards, interleaved."""
    import torch

    from open_buildings.training import chips as chipping
    from open_buildings.training.loop import new_model, train_step
    from open_buildings.training.optim import optimizer_factory

    torch.set_num_threads(1)
    sources = {
        "memory": _source(None),
        "shards": _source(shards, 0),
        "shards, 1 worker": _source(shards, 1),
    }
    transform = chipping.augmenter()
    state = {}
    for name, (cfg, _) in sources.items():
        model = new_model(cfg)
        state[name] = (model, optimizer_factory(cfg)(model), 0)
    walls: dict[str, list[float]] = {n: [] for n in sources}
    batch_walls: dict[str, list[float]] = {n: [] for n in sources}
    for _ in range(rounds):
        for name, (cfg, data) in sources.items():
            model, optimizer, step = state[name]
            for _ in range(warm):
                train_step(model, optimizer, data.labelled(step, transform), cfg, step)
                step += 1
            draw_s, began = 0.0, time.perf_counter()
            for _ in range(timed):
                d0 = time.perf_counter()
                batch = data.labelled(step, transform)
                draw_s += time.perf_counter() - d0
                train_step(model, optimizer, batch, cfg, step)
                step += 1
            walls[name].append((time.perf_counter() - began) / timed)
            batch_walls[name].append(draw_s / timed)
            state[name] = (model, optimizer, step)
    return {
        name: {"s_per_step": min(walls[name]), "s_per_batch_wait": min(batch_walls[name])}
        for name in sources
    }


def memory_child(shards: str | None, batches: int) -> None:
    """Set up a run's data and draw ``batches`` batches; print the peak RSS in MiB."""
    from open_buildings.training import chips as chipping

    _, data = _source(Path(shards) if shards else None, 0)
    transform = chipping.augmenter()
    for step in range(batches):
        data.labelled(step, transform)
    from bench.common import peak_rss_mib

    print(peak_rss_mib())


def memory(shards: str | None, batches: int = 40) -> float:
    """Peak RSS (MiB) of a fresh process running :func:`memory_child`."""
    args = [sys.executable, "-m", "bench.train_shards", "--memory-child", shards or ""]
    args.append(str(batches))
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    """Run the three measurements and print them as tables."""
    p = argparse.ArgumentParser(prog="python -m bench.train_shards")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--timed", type=int, default=6)
    p.add_argument("--warm", type=int, default=2)
    p.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child[0] or None, int(args.memory_child[1]))
        return
    from bench.common import machine

    print(machine())
    folder = Path(tempfile.mkdtemp(prefix="ob-bench-chips-"))
    try:
        one, four = cut(folder / "1x", 64), cut(folder / "4x", 32)
        print("\nob-chips (in memory runner, 1 worker)")
        print("| chips | stride | tiles | chips | MiB | wall s | chips/s | tiles/s |")
        print("|---|---|---|---|---|---|---|---|")
        for name, r in (("1x", one), ("4x", four)):
            print(
                f"| {name} | {r['stride']} | {r['tiles']} | {r['chips']} | "
                f"{r['bytes'] / 2**20:.0f} | {r['seconds']:.1f} | "
                f"{r['chips'] / r['seconds']:.1f} | {r['tiles'] / r['seconds']:.2f} |"
            )
        timing = steps(folder / "1x", args.rounds, args.timed, args.warm)
        base = timing["memory"]["s_per_step"]
        print(f"\nob-train steps ({args.rounds} interleaved rounds of {args.timed} timed steps)")
        print("| batches from | s/step | vs memory | s waiting for the batch |")
        print("|---|---|---|---|")
        for name, t in timing.items():
            print(
                f"| {name} | {t['s_per_step']:.3f} | {base / t['s_per_step']:.2f}x | "
                f"{t['s_per_batch_wait']:.3f} |"
            )
        print("\npeak RSS (fresh process: the run's data set up, 40 batches drawn)")
        print("| batches from | dataset | peak RSS MiB |")
        print("|---|---|---|")
        print(f"| memory | the three areas' scenes | {memory(None):.0f} |")
        print(f"| shards | 1x ({one['chips']} chips) | {memory(str(folder / '1x')):.0f} |")
        print(f"| shards | 4x ({four['chips']} chips) | {memory(str(folder / '4x')):.0f} |")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
