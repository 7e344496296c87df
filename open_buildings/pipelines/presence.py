"""Building presence per date and tile, from each date's ``ob-infer --write-probabilities`` run.

``ob-change`` runs ``ob-infer`` once per date. Each run leaves its per-tile probability COGs
(:mod:`.probabilities`); this module stacks their ``building`` band into one COG per tile with a
band per date (the 2.5D Temporal product's presence raster), and answers from those rasters
whether each date's imagery covered given points (a band is nodata where its date had no
imagery).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from pyproj import Transformer
from rasterio.io import MemoryFile

from open_buildings.geo import cells
from open_buildings.geo.footprints import atomic_write
from open_buildings.geo.grid import GridSpec
from open_buildings.pipelines.probabilities import FOLDER, NODATA, SCALE, probability_path

__all__ = ["PRESENCE_FOLDER", "covered_points", "write_presence"]

PRESENCE_FOLDER = "presence"


def write_presence(
    runs: Sequence[str], dates: Sequence[datetime.date], out: str | os.PathLike[str]
) -> list[Path]:
    """Write ``out/presence/<tile>.tif`` for every tile any date's run wrote probabilities of.

    Each COG has one uint8 band per date (described by its ISO date): the building probability
    times 250, 255 (nodata) where that date had no imagery or did not reach the tile.

    Args:
        runs: each date's ``ob-infer`` output folder, in the order of ``dates``.
        dates: the dates, oldest first.
        out: the ``ob-change`` output folder.

    Returns:
        The files written, sorted by tile.
    """
    tiles = sorted({p.stem for run in runs for p in (Path(run) / FOLDER).glob("*.tif")})
    folder = Path(out) / PRESENCE_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for tile in tiles:
        bands: list[np.ndarray | None] = []
        profile: dict = {}
        for run in runs:
            path = probability_path(run, tile)
            if not os.path.exists(path):
                bands.append(None)
                continue
            with rasterio.open(path) as src:
                bands.append(src.read(1))
                profile = profile or {
                    "crs": src.crs,
                    "transform": src.transform,
                    "width": src.width,
                    "height": src.height,
                }
        shape = (profile["height"], profile["width"])
        data = np.stack([b if b is not None else np.full(shape, NODATA, np.uint8) for b in bands])
        with MemoryFile() as memory:
            with memory.open(
                driver="COG", count=len(dates), dtype="uint8", nodata=NODATA, compress="deflate",
                **profile,
            ) as dst:  # fmt: skip
                dst.write(data)
                dst.descriptions = tuple(d.isoformat() for d in dates)
                dst.scales = [1.0 / SCALE] * len(dates)
            blob = memory.read()
        target = folder / f"{tile}.tif"
        with atomic_write(target, overwrite=True) as handle:
            handle.write(blob)
        written.append(target)
    return written


def covered_points(
    out: str | os.PathLike[str],
    dates: int,
    lon: np.ndarray,
    lat: np.ndarray,
    spec: GridSpec | None = None,
) -> np.ndarray:
    """Whether each date had imagery at each point (lon/lat degrees), read from the presence
    COGs :func:`write_presence` wrote (each tile's file once, every date's band in it).

    A point counts as covered by a date where that date's band of the tile that owns the point
    has data there; a tile without a presence file was covered by no date.

    Args:
        out: the ``ob-change`` output folder holding ``presence/``.
        dates: the number of dates (bands).
        lon: longitudes.
        lat: latitudes.
        spec: the runs' grid (default: ``ob-infer``'s).

    Returns:
        bool array ``(dates, len(lon))``.
    """
    spec = spec or GridSpec()
    lon, lat = np.asarray(lon, dtype=float), np.asarray(lat, dtype=float)
    covered = np.zeros((dates, len(lon)), dtype=bool)
    tiles = np.array([cells.cell_token(x, y, spec.level) for x, y in zip(lon, lat)], dtype=object)
    for tile in set(tiles.tolist()):
        path = Path(out) / PRESENCE_FOLDER / f"{tile}.tif"
        if not path.exists():
            continue
        pick = np.flatnonzero(tiles == tile)
        with rasterio.open(path) as src:
            x, y = Transformer.from_crs("EPSG:4326", src.crs, always_xy=True).transform(
                lon[pick], lat[pick]
            )
            rows, cols = (np.asarray(v) for v in rasterio.transform.rowcol(src.transform, x, y))
            inside = (rows >= 0) & (rows < src.height) & (cols >= 0) & (cols < src.width)
            bands = src.read()
        hit = np.zeros((dates, len(pick)), dtype=bool)
        hit[:, inside] = bands[:, rows[inside], cols[inside]] != NODATA
        covered[:, pick] = hit
    return covered
