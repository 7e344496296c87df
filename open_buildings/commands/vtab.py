"""``ob-vtab BACKBONE...``: how well each backbone's representation transfers (VTAB-1k).

The tasks are the remote-sensing scene sets found in ``--data-dir`` (UC Merced, EuroSAT,
RESISC45: folders of class folders; a missing one is reported as skipped) and the building tasks
cut from the labelled areas of ``--buildings``. A random-init row is added for each family
scored, as the floor.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from open_buildings.commands import add_version, require_train_extra, run_command
from open_buildings.errors import ConfigError, OutputExistsError

#: Scene sets looked for in --data-dir, with the folder names they are published under.
SCENE_SETS = {
    "uc_merced": ("uc_merced/images", "UCMerced_LandUse/Images", "uc_merced"),
    "eurosat": ("eurosat", "EuroSAT", "EuroSAT_RGB", "2750"),
    "resisc45": ("resisc45", "NWPU-RESISC45", "RESISC45"),
}


def parser() -> argparse.ArgumentParser:
    """Return the ``ob-vtab`` argument parser."""
    p = argparse.ArgumentParser(
        prog="ob-vtab",
        description="Score backbones on a remote-sensing VTAB-1k suite (1,000 training examples "
        "per task; top-1 on each task's test split, mean and spread over seeds).",
    )
    add_version(p)
    p.add_argument(
        "backbones",
        nargs="+",
        metavar="BACKBONE",
        help="NAME:random, NAME:imagenet or NAME:WEIGHTS for a registered model (ob-models), "
        "or a zoo model or checkpoint (default, path/weights.safetensors)",
    )
    p.add_argument("--protocol", choices=["ridge", "finetune"], default="ridge")
    p.add_argument("--seeds", type=int, default=3, help="draws of the 1,000 (default 3)")
    p.add_argument("--data-dir", type=Path, help="folder holding the scene sets")
    p.add_argument("--buildings", help="YAML of labelled areas for the building tasks")
    p.add_argument("--size", type=int, default=160, help="scene images resized to this side")
    p.add_argument(
        "--chip", type=int, default=96, help="building chips' side in 50 cm pixels (default 96)"
    )
    p.add_argument("--finetune-steps", type=int, default=200, help="steps per fine-tuning fit")
    p.add_argument("--no-floor", action="store_true", help="do not add the random-init rows")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    p.add_argument("--out", required=True, type=Path, help="folder for vtab.json and vtab.md")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ob-vtab``; return the exit status (0 ok, 2 bad input)."""
    return run_command("ob-vtab", _vtab, parser().parse_args(argv))


def _vtab(args: argparse.Namespace) -> int:
    require_train_extra("ob-vtab")
    import torch

    from open_buildings.config import load_config
    from open_buildings.training import vtab
    from open_buildings.training.config import BuildingAreasConfig
    from open_buildings.training.vtab_tasks import building_tasks, image_folder_task

    if (args.out / "vtab.json").exists():
        raise OutputExistsError(f"{args.out}/vtab.json exists; choose another --out")
    if args.threads:
        torch.set_num_threads(args.threads)
    tasks, skipped = [], []
    for name, candidates in SCENE_SETS.items():
        found = [args.data_dir / c for c in candidates] if args.data_dir else []
        found = [f for f in found if f.is_dir()]
        if found:
            tasks.append(image_folder_task(name, found[0], args.size))
        else:
            where = f"in {args.data_dir}" if args.data_dir else "(no --data-dir)"
            skipped.append(f"{name}: not found {where} (looked for {', '.join(candidates)})")
    if args.buildings:
        areas = load_config(BuildingAreasConfig, args.buildings).areas
        tasks.extend(building_tasks([(a.name, a.imagery, a.labels) for a in areas], args.chip))
    else:
        skipped.append("building tasks: no --buildings areas given")
    for task in list(tasks):
        if len(set(task.labels[task.pool].tolist())) < 2:
            tasks.remove(task)
            skipped.append(f"{task.name}: its training pool holds one class only")
    if not tasks:
        raise ConfigError(
            "no task to run: give --data-dir with a scene set (" + ", ".join(SCENE_SETS) + ") "
            "or --buildings (e.g. pipelines/vtab/buildings.yaml)"
        )
    backbones = list(args.backbones)
    if not args.no_floor:
        backbones += [f for f in _floors(backbones) if f not in backbones]
    result = vtab.run(
        backbones,
        tasks,
        protocol=args.protocol,
        seeds=range(args.seeds),
        finetune_steps=args.finetune_steps,
    )
    vtab.write(result, args.out, skipped)
    print(vtab.markdown(result, skipped))
    print(f"written: {args.out / 'vtab.json'}, {args.out / 'vtab.md'}")
    return 0


def _floors(backbones: Sequence[str]) -> list[str]:
    """``NAME:random`` for every model family among the backbones."""
    from open_buildings.models.checkpoint import read_metadata
    from open_buildings.models.registry import list_models
    from open_buildings.pipelines.runtime import resolve_model
    from open_buildings.training.vtab import RANDOM

    names = []
    for spec in backbones:
        name, _, init = spec.partition(":")
        if not (init and name in list_models()):
            name = read_metadata(resolve_model(spec).path)["name"]
        names.append(f"{name}:{RANDOM}")
    return list(dict.fromkeys(names))
