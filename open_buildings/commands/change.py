"""``ob-change REGION --imagery DATE=SRC ... --out DIR``: buildings followed across dates.

The zero-learning baseline of the change product: ``ob-infer`` runs once per date (same region,
model and threshold, probabilities kept), and the footprints of the dates are matched into
buildings (:mod:`open_buildings.evaluation.change_tracks`, IoU >= 0.5). Written to ``DIR``:

- ``change.csv.gz`` and ``change.parquet``: one row per building, the v3 columns of its most
  recent footprint plus ``change`` (``new``, ``removed``, ``unchanged``), ``first_seen`` and
  ``last_seen``;
- ``presence/<tile>.tif``: a COG per tile with a band per date, the building probability (times
  250; 255 where that date had no imagery);
- ``dates/<date>/``: each date's ``ob-infer`` output, as it would write it alone;
- ``change.json``: the dates, the counts, the command's settings.

With ``--change-model`` (a trained two-date change model), every building also gets
``change_confidence``, the model's change probability inside its footprint
(:mod:`open_buildings.pipelines.change_model`), and ``change_probability/<tile>.tif`` holds the
model's change probability per pair of consecutive dates. The labels stay the baseline's, so the
baseline is always reported beside the model: filter on ``change_confidence`` to keep the changes
the model confirms.

The folder is built beside ``DIR`` and renamed into place when complete.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from open_buildings.commands import add_version, run_command
from open_buildings.commands.run_infer import run_or_raise
from open_buildings.errors import ConfigError, OutputExistsError
from open_buildings.pipelines.torch_runtime import BACKENDS

if TYPE_CHECKING:
    import geopandas as gpd

CHANGE_VALUES = ("new", "removed", "unchanged")


def parser() -> argparse.ArgumentParser:
    """Return the ``ob-change`` argument parser."""
    p = argparse.ArgumentParser(
        prog="ob-change",
        description="Find the buildings of a region at several dates and say which are new, "
        "removed or unchanged: ob-infer per date, footprints matched across dates.",
    )
    add_version(p)
    p.add_argument("region", help="region GeoJSON")
    p.add_argument(
        "--imagery",
        required=True,
        action="append",
        metavar="DATE=SRC",
        help="one date's imagery (e.g. 2011-05-20=pre/), repeated per date; or one STAC "
        "ItemCollection whose items carry datetime",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--model", default="default", help="zoo name or .safetensors checkpoint")
    p.add_argument(
        "--change-model",
        metavar="MODEL",
        help="a two-date change model (zoo name or checkpoint; change_unet_*, needs the [train] "
        "extra): adds change_confidence to every building and writes change_probability/",
    )
    p.add_argument(
        "--min-confidence", default="auto", metavar="X|auto", help="as ob-infer's (every date)"
    )
    p.add_argument(
        "--iou", type=float, default=0.5, help="least IoU for two dates' footprints to be one"
    )
    p.add_argument("--bands", metavar="R,G,B", help="as ob-infer's (every date)")
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace DIR")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ob-change``; return the exit status (0 ok, 2 bad input)."""
    return run_command("ob-change", _change, parser().parse_args(argv))


def _change(args: argparse.Namespace) -> int:
    from open_buildings.evaluation.change_tracks import CHANGE_COLUMNS, track_buildings
    from open_buildings.geo.footprints import write_csv_gz, write_geoparquet
    from open_buildings.geo.imagery_dates import open_dated_imagery
    from open_buildings.pipelines.presence import covered_points, write_presence

    if not 0.0 < args.iou <= 1.0:
        raise ConfigError(f"--iou must be in (0, 1], got {args.iou}")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise OutputExistsError(f"{out} is not empty; pass --overwrite to replace it")
    dated = open_dated_imagery(args.imagery)
    if len(dated.dates) < 2:
        raise ConfigError(
            f"ob-change needs imagery of at least two dates; got {len(dated.dates)} "
            f"({', '.join(d.isoformat() for d in dated.dates)}); repeat --imagery DATE=SRC"
        )
    change_net = _load_change_model(args.change_model) if args.change_model else None
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    runs = []
    for day, spec in zip(dated.dates, dated.specs(staging / "imagery")):
        run = staging / "dates" / day.isoformat()
        argv = [args.region, "--imagery", spec, "--out", str(run), "--model", args.model]
        argv += ["--min-confidence", str(args.min_confidence), "--write-probabilities"]
        argv += ["--no-progress", "--backend", args.backend, "--format", "csv,parquet"]
        argv += ["--bands", args.bands] if args.bands else []
        if not args.quiet:
            print(f"ob-change: {day.isoformat()}: ob-infer on {spec}")
        failure = (
            f"ob-infer failed on the {day.isoformat()} imagery ({spec}); see its message above "
            f"(its output so far: {run})"
        )
        run_or_raise(argv, failure, quiet=args.quiet)
        runs.append(str(run))
    frames = [_footprints(run) for run in runs]
    tiles = write_presence(runs, dated.dates, staging)
    buildings = track_buildings(
        frames,
        dated.dates,
        lambda lon, lat: covered_points(staging, len(dated.dates), lon, lat),
        iou=args.iou,
    )
    columns, confirmed = CHANGE_COLUMNS, None
    if change_net is not None:
        from open_buildings.pipelines.change_model import (
            building_change_confidence,
            write_change_probabilities,
        )

        if not args.quiet:
            print(f"ob-change: the change model {args.change_model} on every pair of dates")
        write_change_probabilities(change_net, dated, staging)
        buildings["change_confidence"] = building_change_confidence(buildings, dated.dates, staging)
        columns = (*CHANGE_COLUMNS, "change_confidence")
        confirmed = {
            v: int(((buildings["change"] == v) & (buildings["change_confidence"] >= 0.5)).sum())
            for v in ("new", "removed")
        }
    write_csv_gz(buildings, staging / "change.csv.gz", extra=columns)
    write_geoparquet(buildings, staging / "change.parquet", extra=columns)
    counts = {v: int((buildings["change"] == v).sum()) for v in CHANGE_VALUES}
    summary = {
        "dates": [d.isoformat() for d in dated.dates],
        "buildings": len(buildings),
        "change": counts,
        "per_date": {d.isoformat(): len(f) for d, f in zip(dated.dates, frames)},
        "presence_tiles": len(tiles),
        "model": args.model,
        "min_confidence": args.min_confidence,
        "iou": args.iou,
        "imagery": list(args.imagery),
        "method": "ob-infer per date, footprints matched across dates (greedy, IoU)",
        "change_model": args.change_model,
        "confirmed_by_change_model": confirmed,
    }
    (staging / "change.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    per_date = ", ".join(f"{d}: {n}" for d, n in summary["per_date"].items())
    print(
        f"ob-change: {len(buildings)} buildings over {len(dated.dates)} dates ({per_date}): "
        f"{counts['new']} new, {counts['removed']} removed, {counts['unchanged']} unchanged"
    )
    if confirmed is not None:
        print(
            f"the change model confirms (change_confidence >= 0.5) {confirmed['new']} of the "
            f"new and {confirmed['removed']} of the removed"
        )
    print(f"footprints: {out}/change.csv.gz, {out}/change.parquet; presence: {out}/presence/")
    return 0


def _load_change_model(spec: str):
    """Load ``--change-model`` in PyTorch and check that it has a change head."""
    from open_buildings.commands import require_train_extra

    require_train_extra("ob-change --change-model")
    from open_buildings.pipelines.change_model import check_change_model
    from open_buildings.pipelines.config import RuntimeConfig
    from open_buildings.pipelines.runtime import load_model, resolve_model

    model, _, _ = load_model(resolve_model(spec), RuntimeConfig(backend="torch"))
    check_change_model(model, spec)
    return model


def _footprints(run: str) -> gpd.GeoDataFrame:
    """One date's footprints; a finished run (it has a manifest) with no building has no shard."""
    from open_buildings.geo.shard_read import read_footprints
    from open_buildings.pipelines.postprocess import empty_footprints

    try:
        return read_footprints(run)
    except FileNotFoundError:
        if not (Path(run) / "manifest.json").is_file():
            raise
        return empty_footprints()
