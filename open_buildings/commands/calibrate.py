"""``ob-calibrate CHECKPOINT``: store a model's operating points and its input ranges.

- ``--imagery SRC --labels FILE``: the model is scored on labelled imagery it never trained on,
  as ``ob-infer`` writes footprints (``training.calibrate.operating_points``); the best-F1
  threshold and the thresholds reaching 80/85/90% precision go into the checkpoint's metadata,
  where ``ob-infer --min-confidence auto`` (the default) finds them.
- ``--training-imagery SRC`` (repeatable): the tile statistics of the imagery it was trained on
  (``training.calibrate.input_ranges``), against which ``ob-infer`` warns about unfamiliar tiles.

The tensors are kept bit for bit; the sha256 sidecar is rewritten.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from open_buildings.commands import add_version, require_train_extra, run_command
from open_buildings.errors import ConfigError, OutputExistsError


def parser() -> argparse.ArgumentParser:
    """Return the ``ob-calibrate`` argument parser."""
    p = argparse.ArgumentParser(
        prog="ob-calibrate",
        description="Measure a checkpoint's operating points (best-F1 threshold; thresholds "
        "for 80/85/90% precision) on labelled imagery it never trained on, and store them in "
        "the checkpoint for ob-infer --min-confidence auto.",
    )
    add_version(p)
    p.add_argument("checkpoint", help="a .safetensors checkpoint (its .sha256 sidecar beside it)")
    p.add_argument("--imagery", metavar="SRC", help="held-out imagery: GeoTIFF/COG, XYZ or STAC")
    p.add_argument("--labels", metavar="FILE", help="its building polygons (GeoJSON)")
    p.add_argument(
        "--training-imagery",
        action="append",
        default=[],
        metavar="SRC",
        help="imagery the model was trained on, to record its tile statistics (repeatable)",
    )
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
    require_train_extra("ob-calibrate")
    from open_buildings.geo.grid import GridSpec
    from open_buildings.geo.imagery import open_imagery
    from open_buildings.models.checkpoint import load_checkpoint, write_operating_points
    from open_buildings.training.calibrate import input_ranges, operating_points
    from open_buildings.training.scenes import load_scenes, read_labels

    out = None if args.in_place else Path(args.out)
    if out is not None and out.exists():
        raise OutputExistsError(f"{out} exists; choose another --out or pass --in-place")
    if bool(args.imagery) != bool(args.labels):
        raise ConfigError("--imagery and --labels go together: held-out imagery and its labels")
    if not args.imagery and not args.training_imagery:
        raise ConfigError("give --imagery and --labels, or --training-imagery, or both")
    try:
        spec = GridSpec(level=args.grid_level)
    except ValueError as exc:
        raise ConfigError(f"--grid-level: {exc}") from None
    model = load_checkpoint(args.checkpoint)
    points = ranges = None
    if args.imagery:
        name = args.name or Path(args.labels).name
        scenes = load_scenes(name, open_imagery(args.imagery), read_labels(args.labels), spec)
        if not scenes:
            raise ConfigError(f"no tile of the grid has imagery in {args.imagery}")
        points = operating_points(model, scenes, measured_on=name, spec=spec)
        print(json.dumps(points, indent=2))
    if args.training_imagery:
        scenes = [
            scene
            for src in args.training_imagery
            for scene in load_scenes(src, open_imagery(src), None, spec)
        ]
        names = ", ".join("/".join(Path(src).parts[-2:]) for src in args.training_imagery)
        ranges = input_ranges(model, scenes, measured_on=names)
        print(json.dumps(ranges, indent=2))
    sha = write_operating_points(args.checkpoint, points, input_ranges=ranges, out=out)
    print(f"calibration written to {out or args.checkpoint} (sha256 {sha})")
    return 0
