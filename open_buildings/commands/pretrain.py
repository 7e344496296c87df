"""``ob-pretrain CONFIG.yaml [-o key=value ...]``: an in-domain encoder for ``init_from``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from open_buildings.commands import add_version, require_train_extra, run_command
from open_buildings.config import load_config


def parser() -> argparse.ArgumentParser:
    """Return the ``ob-pretrain`` argument parser."""
    p = argparse.ArgumentParser(
        prog="ob-pretrain",
        description="Train a building model's encoder on remote-sensing data (supervised scene "
        "classes, or SimSiam on unlabelled imagery) and write encoder.safetensors for init_from.",
    )
    add_version(p)
    p.add_argument("config", help="pretraining config YAML, e.g. pipelines/pretrain/scene.yaml")
    p.add_argument(
        "--override", "-o", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. -o steps=100",
    )  # fmt: skip
    p.add_argument("--out", help="override the config's output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ob-pretrain``; return the exit status (0 ok, 2 bad input)."""
    return run_command("ob-pretrain", _pretrain, parser().parse_args(argv))


def _pretrain(args: argparse.Namespace) -> int:
    require_train_extra("ob-pretrain")
    from open_buildings.training.config import PretrainConfig
    from open_buildings.training.pretrain import pretrain

    overrides = list(args.override)
    if args.out:
        overrides.append(f"out={Path(args.out).resolve()}")
    cfg = load_config(PretrainConfig, args.config, overrides)
    result = pretrain(cfg, progress=not args.quiet)
    summary = result["summary"]
    print(f"pretrained {cfg.model}'s encoder ({cfg.objective}) for {cfg.steps} steps in "
          f"{result['seconds'] / 60:.1f} min")  # fmt: skip
    if "scene_test_top1" in summary:
        print(f"scene test top-1: {summary['scene_test_top1']:.3f}")
    else:
        print(f"projection spread: {summary['z_spread_last']:.2f} (0 would mean collapse)")
    print(f"encoder: {result['encoder']} (sha256 {result['sha256']}); use it as init_from")
    return 0
