"""``ob-chips CONFIG.yaml [-o key=value ...] [--out DIR] [--resume]``: cut training chips."""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Sequence
from pathlib import Path

from open_buildings.commands import add_version, require_train_extra, run_command
from open_buildings.config import load_config
from open_buildings.errors import OutputExistsError, ShardError
from open_buildings.remote import is_remote
from open_buildings.training.config import ChipsConfig


def parser() -> argparse.ArgumentParser:
    """Return the ``ob-chips`` argument parser."""
    p = argparse.ArgumentParser(
        prog="ob-chips",
        description="Cut labelled (and teacher-labelled) areas into sharded training chips with "
        "a Beam job (this machine by default; Dataflow by config), for ob-train's 'shards'.",
    )
    add_version(p)
    p.add_argument("config", help="chips config YAML, e.g. pipelines/chips/default.yaml")
    p.add_argument(
        "--override",
        "-o",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. -o chip.stride=256",
    )
    p.add_argument("--out", help="override the config's output folder")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in the output folder: tiles already cut are kept",
    )
    p.add_argument("--workers", type=int, help="local worker processes (default: the config's)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ob-chips``; return the exit status (0 ok, 2 bad input or every tile failed)."""
    return run_command("ob-chips", _chips, parser().parse_args(argv))


def _chips(args: argparse.Namespace) -> int:
    require_train_extra("ob-chips")
    overrides = list(args.override)
    if args.out:
        out = args.out if is_remote(args.out) else str(Path(args.out).resolve())
        overrides.append(f"out={out}")
    if args.workers:
        overrides.append(f"workers={args.workers}")
    cfg = load_config(ChipsConfig, args.config, overrides)
    out = Path(cfg.out)
    if not is_remote(cfg.out) and out.exists() and any(out.iterdir()) and not args.resume:
        raise OutputExistsError(
            f"{out} is not empty; pass --resume to continue the run there, or pick another --out"
        )
    from open_buildings.pipelines import chips_job

    manifest = chips_job.run(cfg, resume=args.resume)
    for split, entry in sorted(manifest["splits"].items()):
        print(
            f"{split}: {entry['chips']} chips of {cfg.chip.size} px from {entry['tiles']} tiles "
            f"({entry['buildings']} buildings) in {entry.get('shards', 0)} shards"
        )
    dead = manifest["dead_letters"]
    work = out / chips_job.WORK_DIR
    if dead:
        for d in dead:
            print(f"failed: tile {d['tile_id']} ({d['stage']}): {d['reason']}")
        print(f"{len(dead)} tiles failed; fix them and run again with --resume ({work} is kept)")
    elif not is_remote(cfg.out):
        shutil.rmtree(work, ignore_errors=True)
    print(f"chips: {cfg.out} (manifest.json lists the shards with their sha256)")
    if dead and not manifest["shards"]:
        raise ShardError("every tile failed; no shard was written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
