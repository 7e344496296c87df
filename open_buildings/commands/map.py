"""``ob-map OUT_FOLDER|FILE``: one self-contained HTML map of footprints, opened offline."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from open_buildings.commands import add_version, run_command
from open_buildings.errors import ConfigError
from open_buildings.geo.webmap import MAX_FEATURES

#: Files geopandas reads for ob-map besides the v3 shards (.csv.gz, .csv, .parquet) and folders.
VECTOR_SUFFIXES = (".geojson", ".json", ".geojsonl", ".gpkg", ".fgb")


def main(argv: Sequence[str] | None = None) -> int:
    """``ob-map``: write ``map.html`` for an ob-infer output folder or a footprint file.

    Returns:
        The exit status: 0, or 2 on bad input.
    """
    parser = argparse.ArgumentParser(
        prog="ob-map",
        description="Write one self-contained HTML map (opens offline in any browser): the "
        "footprints coloured by confidence over the imagery, a legend, each building's attributes "
        "on click, and the region's outline. Above --max-features buildings it draws counts per "
        "grid square instead.",
    )
    add_version(parser)
    parser.add_argument(
        "source",
        help="an ob-infer output folder, or a footprint file (.csv.gz, .parquet, .geojson, "
        ".geojsonl, .gpkg, .fgb)",
    )
    parser.add_argument(
        "--imagery",
        metavar="SRC",
        help="imagery drawn under the footprints (GeoTIFF/COG files, a folder, STAC, XYZ); "
        "default: what ob-infer ran on, as its manifest says",
    )
    parser.add_argument("--no-imagery", action="store_true", help="draw no imagery")
    parser.add_argument(
        "--region", metavar="GEOJSON", help="outline to draw; default: the manifest's region"
    )
    parser.add_argument(
        "--basemap",
        metavar="URL",
        help="an XYZ tile template under everything, e.g. https://tile.openstreetmap.org/{z}/{x}/"
        "{y}.png (the page then needs the network)",
    )
    parser.add_argument(
        "--max-features",
        type=int,
        default=MAX_FEATURES,
        metavar="N",
        help=f"above N buildings, draw counts per grid square (default {MAX_FEATURES:,})",
    )
    parser.add_argument(
        "-o", "--out", metavar="HTML", help="default: map.html in the folder, or FILE.map.html"
    )
    return run_command("ob-map", _map, parser.parse_args(argv))


def _map(args: argparse.Namespace) -> int:
    out = write_map(
        args.source,
        out=args.out,
        imagery=False if args.no_imagery else args.imagery or True,
        region=args.region,
        basemap=args.basemap,
        max_features=args.max_features,
    )
    print(f"map: {out.resolve()} (open it in a browser; it needs no network)")
    return 0


def write_map(
    source: str | Path,
    *,
    out: str | Path | None = None,
    imagery: str | bool = True,
    region: str | None = None,
    basemap: str | None = None,
    max_features: int = MAX_FEATURES,
) -> Path:
    """Write the HTML map of a footprint folder or file; return its path.

    Args:
        source: an ob-infer output folder or a footprint file.
        out: the HTML file; default ``map.html`` in the folder, or ``<file>.map.html``.
        imagery: the imagery to draw under the footprints: a source, True for the one the
            manifest names (if any), False for none.
        region: a region GeoJSON to outline; None takes the manifest's.
        basemap: an XYZ tile template.
        max_features: see :func:`open_buildings.geo.webmap.render`.

    Raises:
        ConfigError: for a source that is neither a folder nor a footprint file.
    """
    from open_buildings.geo.footprints import atomic_write
    from open_buildings.geo.webmap import render

    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; give an ob-infer output folder or a file")
    settings = _manifest_settings(path)
    frame = _read(path)
    region_path = region or settings.get("region")
    outline = _outline(region_path) if region_path else None
    spec = settings.get("imagery") if imagery is True else imagery or None
    overlay = _overlay(spec, frame, outline) if spec else None
    title = f"{path.name}: open-buildings footprints"
    page = render(
        frame,
        title=title,
        region=outline,
        overlay=overlay,
        basemap=basemap,
        max_features=max_features,
    )
    target = Path(out) if out else (path / "map.html" if path.is_dir() else _beside(path))
    with atomic_write(target, overwrite=True, mode="w") as handle:
        handle.write(page)
    return target


def _beside(path: Path) -> Path:
    name = path.name
    for suffix in (".csv.gz", *VECTOR_SUFFIXES, ".csv", ".parquet"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(name + ".map.html")


def _manifest_settings(path: Path) -> dict[str, Any]:
    manifest = path / "manifest.json"
    if not (path.is_dir() and manifest.is_file()):
        return {}
    return json.loads(manifest.read_text(encoding="utf-8")).get("settings", {})


def _read(path: Path) -> Any:
    import geopandas as gpd

    from open_buildings.geo.shard_read import read_footprints

    name = path.name.lower()
    if path.is_dir() or name.endswith((".csv.gz", ".csv", ".parquet")):
        return read_footprints(path)
    if not name.endswith(VECTOR_SUFFIXES):
        raise ConfigError(
            f"{path.name}: ob-map reads an ob-infer folder, .csv.gz, .csv, .parquet, "
            f"{', '.join(VECTOR_SUFFIXES)}; convert the file to one of those"
        )
    frame = gpd.read_file(path, engine="pyogrio").to_crs("EPSG:4326")
    if "confidence" not in frame.columns:
        raise ConfigError(f"{path.name} has no 'confidence' column: is it a footprint file?")
    return frame


def _outline(region_path: str) -> dict[str, Any] | None:
    """The region as one GeoJSON geometry, or None when its file is gone."""
    import shapely

    from open_buildings.geo.regions import read_region

    if not Path(region_path).is_file():
        return None
    return json.loads(shapely.to_geojson(read_region(region_path).geometry))


def _overlay(spec: str, frame: Any, outline: dict[str, Any] | None) -> Any:
    import shapely

    from open_buildings.geo.imagery import open_imagery
    from open_buildings.geo.webmap import imagery_overlay

    source = open_imagery(spec)
    if len(frame):
        bounds = tuple(frame.total_bounds)
    elif outline is not None:
        bounds = shapely.from_geojson(json.dumps(outline)).bounds
    else:
        bounds = source.bounds_lonlat()
    pad = 0.0005  # ~50 m of context around the buildings
    west, south, east, north = bounds
    return imagery_overlay(source, (west - pad, south - pad, east + pad, north + pad))
