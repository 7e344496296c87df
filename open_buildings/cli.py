"""Console entry points: ob-infer, ob-train, ob-eval, ob-download, ob-tiles, ob-models and
ob-detect."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from open_buildings.errors import OpenBuildingsError


class _QuietBeamImport(logging.Filter):
    """Drop Beam's import-time warning about GCP client libraries, which local runs never use."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()


logging.getLogger().addFilter(_QuietBeamImport())


def infer_main(argv: Sequence[str] | None = None) -> int:
    """``ob-infer REGION``: footprints for a region on this machine (see ``pipelines.infer``)."""
    from open_buildings.pipelines.infer import infer_main as run_infer

    return run_infer(argv)


def train_main(argv: Sequence[str] | None = None) -> int:
    """``ob-train CONFIG.yaml [--override k=v] [--resume]``: train a model."""
    from open_buildings.training.command import main

    return main(argv)


def eval_main(argv: Sequence[str] | None = None) -> int:
    """``ob-eval --pred PRED --truth TRUTH [--region REGION] [--out DIR]``: score footprints."""
    from open_buildings.evaluation.command import main

    return main(argv)


def download_main(argv: Sequence[str] | None = None) -> int:
    """``ob-download REGION --source ROOT``: a region's footprints (see ``pipelines.download``)."""
    from open_buildings.pipelines.download import download_main as run_download

    return run_download(argv)


def detect_main(argv: Sequence[str] | None = None) -> int:
    """``ob-detect REGION|IMAGE --model CKPT --query FILE|--example W,S,E,N``: OWL-ViT boxes."""
    from open_buildings.pipelines.detect import detect_main as run_detect

    return run_detect(argv)


def models_main(argv: Sequence[str] | None = None) -> int:
    """``ob-models``: list the registered models with their parameter counts and channels."""
    from open_buildings.models.__main__ import main

    return main(list(argv) if argv is not None else None)


def tiles_main(argv: Sequence[str] | None = None) -> int:
    """``ob-tiles REGION``: count or list the tiles covering a region; optionally check imagery.

    Returns the process exit status: 0 on success, 2 on bad input (with a message saying why).
    """
    parser = argparse.ArgumentParser(
        prog="ob-tiles",
        description="Count (or list) the S2 tiles that cover a region, and optionally check how "
        "much of each tile an imagery source covers.",
    )
    parser.add_argument("region", help="region GeoJSON (FeatureCollection, Feature or Polygon)")
    parser.add_argument("--level", type=int, default=14, help="S2 level of the tiles (default 14)")
    parser.add_argument("--margin-m", type=float, default=32.0, help="read margin in metres")
    parser.add_argument("--list", metavar="FILE", help="write the tile ids, one per line, to FILE")
    parser.add_argument(
        "--imagery",
        metavar="SRC",
        help="also read every tile from SRC "
        "(GeoTIFF/COG files, an XYZ folder or a STAC JSON) and report coverage",
    )
    parser.add_argument(
        "--fix-invalid",
        action="store_true",
        help="repair self-intersecting region polygons instead of failing",
    )
    parser.add_argument(
        "--max-area-km2",
        type=float,
        default=1_000_000.0,
        help="refuse regions larger than this (default 1,000,000 km2)",
    )
    args = parser.parse_args(argv)
    try:
        return _tiles(args)
    except (OpenBuildingsError, ValueError, OSError) as exc:
        print(f"ob-tiles: error: {exc}", file=sys.stderr)
        return 2


def _tiles(args: argparse.Namespace) -> int:
    from open_buildings.geo import grid, regions

    region = regions.read_region(
        args.region, fix_invalid=args.fix_invalid, max_area_km2=args.max_area_km2
    )
    spec = grid.GridSpec(level=args.level, margin_m=args.margin_m)
    print(f"region {region.source}: {region.area_km2:,.3f} km2, bounds {region.bounds}")
    if not args.list and not args.imagery:
        print(f"{grid.count_tiles(region.geometry, spec):,} tiles at S2 level {spec.level}")
        return 0
    source = None
    if args.imagery:
        from open_buildings.geo import imagery

        source = imagery.open_imagery(args.imagery)
    count = 0
    out = open(args.list, "x", encoding="utf-8") if args.list else None  # noqa: SIM115
    try:
        for tile in grid.cover(region.geometry, spec):
            count += 1
            if out:
                out.write(tile.id + "\n")
            if source is not None:
                image = source.read(tile.grid)
                print(
                    f"  tile {tile.id} ({tile.grid.crs}, {tile.grid.width}x{tile.grid.height} px"
                    f" at {spec.pixel_size_m} m): imagery covers {image.valid.mean():.1%}"
                )
    finally:
        if out:
            out.close()
    print(f"{count:,} tiles at S2 level {spec.level}" + (f", ids in {args.list}" if out else ""))
    return 0
