"""``ob-calibrate CHECKPOINT --imagery SRC --labels FILE``: store a model's operating points.

The model is scored on labelled imagery it never trained on, as ``ob-infer`` writes footprints
(``training.calibrate.operating_points``); the best-F1 threshold and the thresholds reaching
80/85/90% precision go into the checkpoint's metadata, where ``ob-infer --min-confidence auto``
(the default) finds them. The tensors are kept bit for bit; the sha256 sidecar is rewritten.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from open_buildings.commands import run_command
from open_buildings.errors import ConfigError, OutputExistsError


def parser() -> argparse.ArgumentParser:
    """Return the ``ob-calibrate`` argument parser."""
    p = argparse.ArgumentParser(
        prog="ob-calibrate",
        description="Measure a checkpoint's operating points (best-F1 threshold; thresholds "
        "for 80/85/90%% precision) on labelled imagery it never trained on, and store them in "
        "the checkpoint for ob-infer --min-confidence auto.",
    )
    p.add_argument("checkpoint", help="a .safetensors checkpoint (its .sha256 sidecar beside it)")
    p.add_argument("--imagery", required=True, metavar="SRC", help="GeoTIFF/COG, XYZ or STAC")
    p.add_argument("--labels", required=True, metavar="FILE", help="building polygons (GeoJSON)")
    p.add_argument("--name", help="what the data is, for the record (default: the labels file)")
    p.add_argument("--grid-level", type=int, default=14, help="S2 level of the tiles (14)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", metavar="FILE", help="write a calibrated copy here")
    where.add_argument("--in-place", action="store_true", help="rewrite the checkpoint itself")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ob-calibrate``; return the exit status (0 ok, 2 bad input)."""
    return run_command("ob-calibrate", _calibrate, parser().parse_args(argv))


def _calibrate(args: argparse.Namespace) -> int:
    from open_buildings.geo.grid import GridSpec
    from open_buildings.geo.imagery import open_imagery
    from open_buildings.models.checkpoint import load_checkpoint, write_operating_points
    from open_buildings.training.calibrate import operating_points
    from open_buildings.training.scenes import load_scenes, read_labels

    out = None if args.in_place else Path(args.out)
    if out is not None and out.exists():
        raise OutputExistsError(f"{out} exists; choose another --out or pass --in-place")
    try:
        spec = GridSpec(level=args.grid_level)
    except ValueError as exc:
        raise ConfigError(f"--grid-level: {exc}") from None
    model = load_checkpoint(args.checkpoint)
    name = args.name or Path(args.labels).name
    scenes = load_scenes(name, open_imagery(args.imagery), read_labels(args.labels), spec)
    if not scenes:
        raise ConfigError(f"no tile of the grid has imagery in {args.imagery}")
    points = operating_points(model, scenes, measured_on=name, spec=spec)
    sha = write_operating_points(args.checkpoint, points, out=out)
    print(json.dumps(points, indent=2))
    print(f"operating points written to {out or args.checkpoint} (sha256 {sha})")
    return 0
