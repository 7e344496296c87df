"""``ob-train CONFIG.yaml [-o key=value ...] [--resume] [--device cuda]``: train a model."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from open_buildings.commands import add_version, require_train_extra, run_command
from open_buildings.config import load_config
from open_buildings.errors import ConfigError
from open_buildings.training.chip_shards import open_chipset
from open_buildings.training.config import TrainConfig


def parser() -> argparse.ArgumentParser:
    """Return the ``ob-train`` argument parser."""
    p = argparse.ArgumentParser(
        prog="ob-train",
        description="Train a building model from a YAML config (unknown keys are errors).",
    )
    add_version(p)
    p.add_argument("config", help="training config YAML, e.g. models/default/config.yaml")
    p.add_argument(
        "--override",
        "-o",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. -o steps=100 -o mixup.enabled=true (paths in it "
        "are read as if written in the YAML file)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in the config's 'out' folder exactly where it stopped",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], help="override the config's device")
    p.add_argument("--out", help="override the config's output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="data-parallel processes on this machine (DistributedDataParallel: gloo on CPUs, "
        "NCCL on GPUs, one GPU each); batch_size is per process. Several machines: start "
        "ob-train on each with torchrun instead (deploy/training.md)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ob-train``; return the exit status (0 ok, 2 bad input)."""
    return run_command("ob-train", _train, parser().parse_args(argv))


def _train(args: argparse.Namespace) -> int:
    require_train_extra("ob-train")
    overrides = list(args.override)
    if args.device:
        overrides.append(f"device={args.device}")
    if args.out:  # a flag's path is relative to the working directory, not to the YAML
        overrides.append(f"out={Path(args.out).resolve()}")
    cfg = load_config(TrainConfig, args.config, overrides)
    if args.nproc < 1:
        raise ConfigError(f"--nproc must be 1 or more, got {args.nproc}")
    if args.nproc == 1:
        result = rank_main(cfg, args.resume, not args.quiet)
    else:
        if cfg.shards:  # refused here rather than in every rank
            open_chipset(cfg.shards)
        result = _launch(args.nproc, cfg, args.resume, not args.quiet)
    if "weights" not in result:  # a rank other than 0 under torchrun: rank 0 reports
        return 0
    if args.nproc > 1:
        print(f"{args.nproc} processes, {cfg.batch_size} chips each a step")
    precision = "bf16 autocast" if result["bf16"] else "fp32"
    if cfg.bf16 == "auto":
        precision += " (auto: " + (
            "native bf16 here)" if result["bf16"] else "no native bf16 here)"
        )
    steps = result["history"][-1]["step"] if result["history"] else cfg.steps
    print(
        f"trained {cfg.model} for {steps} steps in {result['seconds'] / 60:.1f} min, "
        f"{precision}" + (f"; stopped: {result['stopped']}" if result["stopped"] else "")
    )
    if result["best_step"] is not None:
        print(f"kept the weights of step {result['best_step']}, the best validation")
    print(f"weights: {result['weights']} (+ .sha256); curve: {cfg.out}/training_curve.png")
    f = result["final"]
    if f and "object_f1" in f:  # a change model, validated on held-out pairs
        print(
            f"validation ({f['pairs']} held-out pairs): change F1 {f['f1']:.3f} (precision "
            f"{f['precision']:.3f}, recall {f['recall']:.3f}), changed buildings F1 "
            f"{f['object_f1']:.3f}, building F1 per date {f['building_f1']:.3f}"
        )
    elif f:
        print(
            f"validation: AP {f['ap']:.3f}  AP50 {f['ap50']:.3f}  F1 {f['f1']:.3f} "
            f"(precision {f['precision']:.3f}, recall {f['recall']:.3f})"
        )
    if result["operating_points"]:
        best = result["operating_points"]["best_f1"]
        print(
            f"operating point (ob-infer's default --min-confidence): {best['threshold']:.3f}, "
            f"F1 {best['f1']:.3f} (precision {best['precision']:.3f}, recall {best['recall']:.3f})"
        )
    return 0


def rank_main(cfg: TrainConfig, resume: bool, progress: bool) -> dict:
    """One process's training run (``--nproc`` starts one per rank)."""
    from open_buildings.training.loop import train

    return train(cfg, resume=resume, progress=progress)


def _launch(nproc: int, cfg: TrainConfig, resume: bool, progress: bool) -> dict:
    """Run ``nproc`` ranks; a rank's refusal of bad input becomes this command's error."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from open_buildings.training.distributed import launch

    try:
        return launch(nproc, rank_main, cfg, resume, progress)
    except ChildFailedError as exc:
        _, failure = exc.get_first_failure()
        message = str(failure.message)
        for name in ("ConfigError", "ShardError", "CheckpointError"):
            if name in message:
                raise ConfigError(f"a training process refused the run: {message}") from exc
        raise


if __name__ == "__main__":
    raise SystemExit(main())
