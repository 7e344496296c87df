"""``ob-download REGION --source ROOT``: the buildings of a region from a sharded dataset."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from open_buildings.commands import add_version, run_command
from open_buildings.pipelines.download import EXTENSIONS, FORMATS, download


def main(argv: Sequence[str] | None = None) -> int:
    """``ob-download REGION --source ROOT``: the footprints of a region, streamed to one file.

    Returns:
        The exit status: 0 on success, 2 on bad input.
    """
    parser = argparse.ArgumentParser(
        prog="ob-download",
        description="Extract the buildings inside a region from a sharded footprint dataset: a "
        "folder written by ob-infer, or one laid out like the published Open Buildings v3 data "
        "(polygons_s2_level_4_gzip/{token}_buildings.csv.gz). Only the shards touching the region "
        "are read, one chunk at a time.",
    )
    add_version(parser)
    parser.add_argument("region", help="region GeoJSON")
    parser.add_argument("--source", required=True, metavar="ROOT", help="dataset folder or gs://")
    parser.add_argument("--format", choices=FORMATS, default="csv")
    parser.add_argument("--min-confidence", type=float, default=0.0, metavar="X")
    parser.add_argument("--out", metavar="FILE", help="default: <region>_buildings.<ext>")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out damaged rows and shards with a warning that counts them (default: stop "
        "at the first, naming the file and row; nothing is written then)",
    )
    return run_command("ob-download", _download, parser.parse_args(argv))


def _download(args: argparse.Namespace) -> int:
    from open_buildings.geo.regions import read_region

    region = read_region(args.region)
    out = args.out or f"{Path(args.region).stem}_buildings{EXTENSIONS[args.format]}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = download(
            region.geometry,
            args.source,
            out,
            fmt=args.format,
            min_confidence=args.min_confidence,
            overwrite=args.overwrite,
            skip_bad=args.skip_bad,
        )
    for w in caught:
        print(f"ob-download: warning: {w.message}", file=sys.stderr)
    print(f"{result['rows']:,} buildings from {len(result['shards'])} shard(s) -> {result['out']}")
    return 0
