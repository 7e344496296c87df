"""``ob-tiles REGION``: count or list the tiles covering a region; optionally check imagery."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from open_buildings.commands import add_version, run_command
from open_buildings.errors import ConfigError


def main(argv: Sequence[str] | None = None) -> int:
    """``ob-tiles REGION``: count or list the tiles covering a region; optionally check imagery.

    Returns the process exit status: 0 on success, 2 on bad input (with a message saying why).
    """
    parser = argparse.ArgumentParser(
        prog="ob-tiles",
        description="Count (or list) the S2 tiles that cover a region, and optionally check how "
        "much of each tile an imagery source covers.",
    )
    add_version(parser)
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
    return run_command("ob-tiles", _tiles, parser.parse_args(argv))


def _tiles(args: argparse.Namespace) -> int:
    from open_buildings.geo import grid, regions

    region = regions.read_region(
        args.region, fix_invalid=args.fix_invalid, max_area_km2=args.max_area_km2
    )
    try:
        spec = grid.GridSpec(level=args.level, margin_m=args.margin_m)
    except ValueError as exc:
        raise ConfigError(f"--level/--margin-m: {exc}") from None
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
