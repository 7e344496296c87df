"""Slippy-map (XYZ) tile imagery: a folder of tiles or a URL template.

The tiles carry no georeference; each one's position comes from its x, y, z (Web-Mercator tile
maths, EPSG:3857). Import from :mod:`open_buildings.geo.imagery`.
"""

from __future__ import annotations

import glob
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.enums import Resampling
from rasterio.warp import reproject, transform_bounds

from open_buildings.errors import ImageryError
from open_buildings.geo.grid import PixelGrid
from open_buildings.geo.imagery_raster import TileImage, map_bands
from open_buildings.geo.raster_open import (
    GDAL_ERRORS,
    ReadLimits,
    gdal_message,
    gdal_path,
    on_network,
    open_raster,
)

#: Half the width of the Web-Mercator square, in metres.
MERCATOR_HALF = 20037508.342789244
_MAX_LAT = 85.0511287798066
_EXTS = ("png", "jpg", "jpeg", "webp", "tif", "tiff")
_OAM = re.compile(r"^OAM-(\d+)-(\d+)-(\d+)\.(" + "|".join(_EXTS) + r")$", re.IGNORECASE)
_MAX_TILES = 4096  # tiles read for one grid


def tile_bounds_3857(x: int, y: int, z: int) -> tuple[float, float, float, float]:
    """Return the EPSG:3857 bounds ``(left, bottom, right, top)`` of slippy-map tile x, y, z.

    Args:
        x: tile column, 0 at the antimeridian (west).
        y: tile row, 0 at the north edge.
        z: zoom level.

    Returns:
        The tile's bounds in metres.
    """
    size = 2 * MERCATOR_HALF / 2**z
    left, top = -MERCATOR_HALF + x * size, MERCATOR_HALF - y * size
    return (left, top - size, left + size, top)


def scan_tiles(folder: str | os.PathLike[str]) -> dict[tuple[int, int, int], str]:
    """Find the tiles in a folder named ``OAM-x-y-z.ext`` or laid out as ``z/x/y.ext``.

    Args:
        folder: the folder to scan.

    Returns:
        A map from ``(z, x, y)`` to the tile's path.
    """
    root = Path(folder)
    tiles: dict[tuple[int, int, int], str] = {}
    for entry in root.iterdir():
        match = _OAM.match(entry.name)
        if match and entry.is_file():
            x, y, z = (int(v) for v in match.groups()[:3])
            tiles[(z, x, y)] = str(entry)
    for z_dir in root.iterdir():
        if not (z_dir.is_dir() and z_dir.name.isdigit()):
            continue
        for x_dir in z_dir.iterdir():
            if not (x_dir.is_dir() and x_dir.name.isdigit()):
                continue
            for tile in x_dir.iterdir():
                stem, _, ext = tile.name.partition(".")
                if stem.isdigit() and ext.lower() in _EXTS and tile.is_file():
                    tiles[(int(z_dir.name), int(x_dir.name), int(stem))] = str(tile)
    return tiles


def _scan_template(template: str) -> dict[tuple[int, int, int], str]:
    pattern = re.escape(template)
    for key in ("z", "x", "y"):
        pattern = pattern.replace(re.escape("{" + key + "}"), f"(?P<{key}>\\d+)", 1)
    regex = re.compile(pattern + "$")
    found = {}
    for path in glob.glob(re.sub(r"\{[zxy]\}", "*", template)):
        match = regex.match(path)
        if match:
            found[(int(match["z"]), int(match["x"]), int(match["y"]))] = path
    return found


@dataclass
class XYZSource:
    """Slippy-map tiles: a local folder, or a ``{z}/{x}/{y}`` template (local or https://).

    Attributes:
        location: a folder of ``OAM-x-y-z.ext`` or ``z/x/y.ext`` tiles, or a template with
            ``{z}``, ``{x}`` and ``{y}``.
        zoom: the zoom to read. None: the folder's zoom (the finest, if it holds several); for a
            remote template, the coarsest zoom whose pixels are no larger than the grid's.
        bands: explicit 1-based ``(r, g, b)``; None uses colour interpretation (RGB, RGBA).
        limits: caps checked on each tile before it is read.
    """

    location: str | os.PathLike[str]
    zoom: int | None = None
    bands: tuple[int, int, int] | None = None
    limits: ReadLimits = field(default_factory=ReadLimits)
    _tiles: dict[tuple[int, int, int], str] | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        """Find the local tiles, or check the remote template."""
        text = os.fspath(self.location)
        self.location = text
        if "{z}" in text or "{x}" in text or "{y}" in text:
            if not all(k in text for k in ("{z}", "{x}", "{y}")):
                raise ImageryError(f"XYZ template {text!r} must contain {{z}}, {{x}} and {{y}}")
            probe = gdal_path(text.replace("{z}", "0").replace("{x}", "0").replace("{y}", "0"))
            self._tiles = None if on_network(probe) else _scan_template(text)
        elif os.path.isdir(text):
            self._tiles = scan_tiles(text)
        else:
            raise ImageryError(
                f"XYZ source {text!r} is neither a folder nor a template with {{z}}/{{x}}/{{y}}"
            )
        if self._tiles is not None:
            zooms = sorted({z for z, _, _ in self._tiles})
            if not zooms:
                raise ImageryError(
                    f"no XYZ tiles found in {text!r}; expected files named "
                    "OAM-x-y-z.png or z/x/y.png"
                )
            if self.zoom is None:
                self.zoom = zooms[-1]
            elif self.zoom not in zooms:
                raise ImageryError(f"zoom {self.zoom} is not in {text!r}; it holds zooms {zooms}")
            self._tiles = {k: v for k, v in self._tiles.items() if k[0] == self.zoom}

    def bounds_lonlat(self) -> tuple[float, float, float, float]:
        """Return the union of the tiles' footprints in degrees (whole world if remote)."""
        if self._tiles is None:
            return (-180.0, -_MAX_LAT, 180.0, _MAX_LAT)
        boxes = np.array([tile_bounds_3857(x, y, z) for z, x, y in self._tiles])
        return transform_bounds(
            "EPSG:3857",
            "EPSG:4326",
            boxes[:, 0].min(),
            boxes[:, 1].min(),
            boxes[:, 2].max(),
            boxes[:, 3].max(),
        )

    def _zoom_for(self, grid: PixelGrid) -> int:
        if self.zoom is not None:
            return self.zoom
        res = abs(grid.transform.a)
        _, south, _, north = transform_bounds(grid.crs, "EPSG:4326", *grid.bounds)
        lat = (south + north) / 2
        metres_per_px_z0 = 2 * MERCATOR_HALF / 256 * math.cos(math.radians(lat))
        return min(22, max(0, math.ceil(math.log2(metres_per_px_z0 / res))))

    def read(self, grid: PixelGrid) -> TileImage:
        """Read the tiles under ``grid``, mosaic them and resample onto it (average).

        Args:
            grid: the target grid.

        Returns:
            The tile; pixels under no tile are ``valid=False``.

        Raises:
            ImageryError: if a tile cannot be read or the grid needs too many tiles.
        """
        z = self._zoom_for(grid)
        left, bottom, right, top = transform_bounds(
            grid.crs, "EPSG:3857", *grid.bounds, densify_pts=21
        )
        size = 2 * MERCATOR_HALF / 2**z
        last = 2**z - 1
        x0, x1 = (min(last, max(0, int((v + MERCATOR_HALF) // size))) for v in (left, right))
        y0, y1 = (min(last, max(0, int((MERCATOR_HALF - v) // size))) for v in (top, bottom))
        if (x1 - x0 + 1) * (y1 - y0 + 1) > _MAX_TILES:
            count = (x1 - x0 + 1) * (y1 - y0 + 1)
            raise ImageryError(
                f"the grid needs {count} tiles at zoom {z}, over the cap of "
                f"{_MAX_TILES}; use a smaller tile or a coarser zoom"
            )
        mosaic: np.ndarray | None = None
        px = 0
        for x in range(x0, x1 + 1):
            for y in range(y0, y1 + 1):
                tile = self._read_tile(z, x, y)
                if tile is None:
                    continue
                if mosaic is None:
                    px = tile.shape[1]
                    mosaic = np.zeros((4, (y1 - y0 + 1) * px, (x1 - x0 + 1) * px), np.uint8)
                if tile.shape[1:] != (px, px):
                    raise ImageryError(
                        f"XYZ tile {z}/{x}/{y} is {tile.shape[2]} x "
                        f"{tile.shape[1]} px, but others are {px} x {px}"
                    )
                r, c = (y - y0) * px, (x - x0) * px
                mosaic[:, r : r + px, c : c + px] = tile
        out = np.zeros((4, grid.height, grid.width), np.uint8)
        if mosaic is not None:
            src_left, _, _, src_top = tile_bounds_3857(x0, y0, z)
            reproject(
                mosaic,
                out,
                src_transform=Affine(size / px, 0, src_left, 0, -size / px, src_top),
                src_crs="EPSG:3857",
                dst_transform=grid.transform,
                dst_crs=grid.crs,
                src_alpha=4,
                dst_alpha=4,
                resampling=Resampling.average,
            )
        return TileImage(rgb=out[:3].copy(), valid=out[3] > 0, grid=grid)

    def _read_tile(self, z: int, x: int, y: int) -> np.ndarray | None:
        if self._tiles is not None:
            name = self._tiles.get((z, x, y))
            if name is None:
                return None
        else:
            name = str(self.location).format(z=z, x=x, y=y)
        path = gdal_path(name)
        try:
            with open_raster(name, path, self.limits) as ds:
                if ds.dtypes[0] != "uint8":
                    raise ImageryError(f"XYZ tile {name} is {ds.dtypes[0]}; tiles must be 8-bit")
                bands = map_bands(name, ds, self.bands)
                data = ds.read(indexes=list(bands))
                alpha = ds.dataset_mask()
        except ImageryError as exc:
            if self._tiles is None and "404" in str(exc):  # a server's "no tile here"
                return None
            raise
        except GDAL_ERRORS as exc:
            raise ImageryError(
                f"XYZ tile {name} could not be read: {gdal_message(exc)}; the file may be "
                "truncated or damaged"
            ) from exc
        return np.concatenate([data, alpha[None]])
