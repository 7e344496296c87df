"""``ob-download REGION --source ROOT``: the buildings of a region from a sharded dataset."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from open_buildings.commands import add_version, run_command
from open_buildings.errors import ConfigError
from open_buildings.geo.shard_source import LAYOUTS
from open_buildings.pipelines.download import EXTENSIONS, FORMATS, download


def main(argv: Sequence[str] | None = None) -> int:
    """``ob-download REGION --source ROOT``: the footprints of a region, streamed to one file.

    Returns:
        The exit status: 0 on success, 1 when no shard covers the region (no data there), 2 on
        bad input.
    """
    parser = argparse.ArgumentParser(
        prog="ob-download",
        description="Extract the buildings inside a region from a sharded footprint dataset: a "
        "folder written by ob-infer, or one laid out like the published Open Buildings v3 data "
        "(polygons_s2_level_4_gzip/{token}_buildings.csv.gz). Only the shards touching the region "
        "are read, one chunk at a time.",
    )
    add_version(parser)
    parser.add_argument("region", nargs="?", help="region GeoJSON (or give --bbox or --country)")
    parser.add_argument(
        "--bbox",
        type=_bbox,
        metavar="W,S,E,N",
        help="a lon/lat box instead of a region file (W > E crosses the antimeridian)",
    )
    parser.add_argument(
        "--country",
        metavar="NAME|ISO",
        help="a country's outline instead of a region file: ISO code (KEN, KE) or English name, "
        "from the shipped Natural Earth 1:10m outlines (simplified, ~1 km at borders)",
    )
    parser.add_argument(
        "--list-countries", action="store_true", help="print the countries --country knows"
    )
    parser.add_argument(
        "--source",
        metavar="ROOT",
        help="the dataset: a folder, an https:// URL or a gs:// bucket path (read anonymously; "
        "OPEN_BUILDINGS_GCS_TOKEN=google_default uses your credentials)",
    )
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="auto",
        help="auto (default: from the folder's name, its manifest or listing, and a CSV shard's "
        "first row); ob-infer; v3 (polygons_s2_level_4_gzip/, with header); v3-no-header "
        "(polygons_s2_level_6_gzip_no_header/)",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        help="default: from --out's suffix (.csv.gz/.csv, .parquet, .geojson, .geojsonl, .gpkg, "
        ".fgb), else csv",
    )
    parser.add_argument("--min-confidence", type=float, default=0.0, metavar="X")
    parser.add_argument("--out", metavar="FILE", help="default: <region>_buildings.<ext>")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out damaged rows and shards with a warning that counts them (default: stop "
        "at the first, naming the file and row; nothing is written then)",
    )
    return run_command("ob-download", _download, parser.parse_args(argv))


def _download(args: argparse.Namespace) -> int:
    from open_buildings.geo.countries import country_region, country_table, find_country
    from open_buildings.geo.regions import read_region, region_from_bbox

    if args.list_countries:
        for iso3, iso2, name in country_table():
            print(f"{iso3}  {iso2}  {name}")
        return 0
    if args.source is None:
        raise ConfigError("give --source: the dataset folder, https:// URL or gs:// path")
    given = [x is not None for x in (args.region, args.bbox, args.country)]
    if sum(given) != 1:
        raise ConfigError("give one of: a region file, --bbox W,S,E,N, or --country NAME|ISO")
    if args.region:
        region, stem = read_region(args.region), Path(args.region).stem
    elif args.bbox:
        region, stem = region_from_bbox(*args.bbox), "bbox"
    else:
        region, stem = country_region(args.country), find_country(args.country)["iso_a3"]
        print(f"region: {region.source}, {region.area_km2:,.0f} km2")
    fmt = _format(args.out, args.format)
    out = args.out or f"{stem}_buildings{EXTENSIONS[fmt]}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = download(
            region.geometry,
            args.source,
            out,
            fmt=fmt,
            min_confidence=args.min_confidence,
            overwrite=args.overwrite,
            skip_bad=args.skip_bad,
            layout=args.layout,
            progress=not args.no_progress and sys.stderr.isatty(),
        )
    for w in caught:
        print(f"ob-download: warning: {w.message}", file=sys.stderr)
    print(f"{result['rows']:,} buildings from {len(result['shards'])} shard(s) -> {result['out']}")
    if not result["shards"]:
        print(
            f"ob-download: warning: {args.source} has no shard covering the region, so there "
            "is no data for it (not: no buildings); check the region and --source",
            file=sys.stderr,
        )
        return 1
    return 0


def _bbox(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"{text!r} is not W,S,E,N: four numbers in degrees")
    return values  # type: ignore[return-value]


#: What an --out suffix means; anything else is refused rather than written as CSV text.
_SUFFIXES = {
    ".csv.gz": "csv",
    ".csv": "csv",
    ".parquet": "parquet",
    ".geojson": "geojson",
    ".geojsonl": "geojsonl",
    ".gpkg": "gpkg",
    ".fgb": "fgb",
}


def _format(out: str | None, asked: str | None) -> str:
    """The output format: ``--format``, else ``--out``'s suffix; a mismatch is an error."""
    if out is None:
        return asked or "csv"
    name = out.lower()
    implied = next((f for suffix, f in _SUFFIXES.items() if name.endswith(suffix)), None)
    if implied is None:
        raise ConfigError(
            f"--out {out}: ob-download writes {', '.join(_SUFFIXES)} files; give one of those "
            "suffixes (or write .parquet and convert it with ogr2ogr)"
        )
    if asked is not None and asked != implied:
        raise ConfigError(f"--out {out} is a {implied} file name but --format is {asked}")
    return implied
