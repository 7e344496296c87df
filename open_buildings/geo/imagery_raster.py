"""GeoTIFF/COG imagery: safe opening, band mapping, scaling, and the mosaic source.

Import from :mod:`open_buildings.geo.imagery`; this module holds the pieces that the XYZ and STAC
sources share with :class:`RasterSource`.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import rasterio
from pyproj import Geod
from rasterio.enums import ColorInterp, Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds

from open_buildings.errors import ImageryError
from open_buildings.geo.grid import PixelGrid
from open_buildings.geo.raster_open import (
    GDAL_ERRORS,
    REMOTE_ENV,
    ReadLimits,
    check_georeference,
    gdal_message,
    gdal_path,
    on_network,
    open_raster,
)

_STATS_SIZE = 1024  # the longest side of the decimated read used for scaling statistics
#: Source pixels outside this range (metres) are warned about: the model sees 50 cm pixels, and
#: imagery much finer or coarser than that (or a georeference with absurd pixel sizes) gives
#: few or no buildings.
PLAUSIBLE_RESOLUTION_M = (0.5 / 4, 0.5 * 2)
_GEOD = Geod(ellps="WGS84")


@dataclass
class TileImage:
    """The pixels of one tile on its 50 cm grid.

    Attributes:
        rgb: uint8 array of shape (3, H, W).
        valid: bool array of shape (H, W); False where the imagery has no data.
        grid: the grid the pixels lie on.
    """

    rgb: np.ndarray
    valid: np.ndarray
    grid: PixelGrid

    @property
    def empty(self) -> bool:
        """Return True when no pixel of the tile is valid."""
        return not bool(self.valid.any())


class ImagerySource(Protocol):
    """Anything that can return the pixels of a tile on a given grid."""

    def read(self, grid: PixelGrid) -> TileImage:
        """Return the tile's pixels resampled onto ``grid``."""
        ...

    def bounds_lonlat(self) -> tuple[float, float, float, float]:
        """Return the union footprint ``(west, south, east, north)`` in degrees."""
        ...


def map_bands(
    name: str, ds: rasterio.DatasetReader, bands: tuple[int, int, int] | None
) -> tuple[int, int, int]:
    """Choose the bands that hold red, green and blue.

    Args:
        name: the file name, for messages.
        ds: the open dataset.
        bands: the user's explicit 1-based ``(r, g, b)``, or None to use colour interpretation.

    Returns:
        The 1-based band indexes of red, green and blue.

    Raises:
        ImageryError: if the mapping is ambiguous or the explicit bands do not exist.
    """
    if bands is not None:
        if len(bands) != 3 or any(not 1 <= int(b) <= ds.count for b in bands):
            raise ImageryError(
                f"bands={bands!r} is not valid for imagery file {name}, which has "
                f"{ds.count} band(s); pass three 1-based indexes (r, g, b)"
            )
        return (int(bands[0]), int(bands[1]), int(bands[2]))
    interp = list(ds.colorinterp)
    found = [
        interp.index(c) + 1
        for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
        if interp.count(c) == 1
    ]
    if len(found) == 3:
        return (found[0], found[1], found[2])
    if ds.count == 3 and ColorInterp.alpha not in interp:
        return (1, 2, 3)
    names = ", ".join(c.name for c in interp)
    raise ImageryError(
        f"imagery file {name} has {ds.count} band(s) of {ds.dtypes[0]} ({names}) and its colour "
        "interpretation does not say which are red, green and blue; pass them, 1-based: "
        "--bands R,G,B on the command line (e.g. --bands 1,1,1 for a single grey band), "
        "bands=(r, g, b) in Python"
    )


def to_uint8(data: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Stretch ``data`` linearly from ``[low, high]`` (per band) to 0..255.

    Args:
        data: array of shape (bands, H, W), any numeric dtype.
        low: per-band value that maps to 0.
        high: per-band value that maps to 255.

    Returns:
        The uint8 array, clipped at both ends (NaN becomes 0).
    """
    low = np.asarray(low, dtype=np.float64).reshape(-1, 1, 1)
    span = np.maximum(np.asarray(high, dtype=np.float64).reshape(-1, 1, 1) - low, 1e-12)
    out = (data.astype(np.float64) - low) * (255.0 / span)
    return np.nan_to_num(np.clip(np.rint(out), 0, 255)).astype(np.uint8)


@dataclass(frozen=True)
class _FileInfo:
    name: str
    path: str
    bands: tuple[int, int, int]
    dtype: str
    add_alpha: bool
    bounds: tuple[float, float, float, float]  # lon/lat
    resolution_m: float  # the ground size of one pixel, the geometric mean of its two sides


def _footprint_lonlat(ds: rasterio.DatasetReader) -> tuple[float, float, float, float]:
    corners = [ds.transform @ (c, r) for c in (0, ds.width) for r in (0, ds.height)]
    xs, ys = zip(*corners)
    return transform_bounds(ds.crs, "EPSG:4326", min(xs), min(ys), max(xs), max(ys), densify_pts=21)


def ground_resolution_m(
    bounds: tuple[float, float, float, float], width: int, height: int
) -> float:
    """Return the geometric mean pixel size in metres of a ``width x height`` image over ``bounds``.

    Args:
        bounds: the image's footprint ``(west, south, east, north)`` in degrees.
        width: its width in pixels.
        height: its height in pixels.
    """
    west, south, east, north = bounds
    mid_lat, mid_lon = (south + north) / 2, (west + east) / 2
    across = _GEOD.inv(west, mid_lat, east, mid_lat)[2] / max(width, 1)
    down = _GEOD.inv(mid_lon, south, mid_lon, north)[2] / max(height, 1)
    return math.sqrt(max(across, 0.0) * max(down, 0.0))


def grid_bounds_lonlat(grid: PixelGrid) -> tuple[float, float, float, float]:
    """Return a grid's footprint ``(west, south, east, north)`` in degrees.

    Args:
        grid: the target grid.

    Returns:
        The bounding box in EPSG:4326.
    """
    return transform_bounds(grid.crs, "EPSG:4326", *grid.bounds, densify_pts=21)


@dataclass
class RasterSource:
    """One or many georeferenced files (GeoTIFF/COG, or JPEG/PNG with a sidecar), as a mosaic.

    Every file is opened once at construction to check it (allowed driver, caps, georeference,
    band mapping) and to index its footprint, so a tile opens only the files it touches. Where
    files overlap, the first file with valid data at a pixel wins. In a mosaic of several files,
    one that cannot be opened is skipped with a warning (:attr:`skipped`); a tile then fails
    (a dead letter) wherever it has pixels without imagery, since they may be that file's.

    Attributes:
        paths: local paths or gs://, s3://, https:// URLs, in priority order.
        bands: explicit 1-based ``(r, g, b)`` for every file, or None for colour interpretation.
        scale: ``(low, high)`` stretched to 0..255 for non-uint8 files; None computes the 2nd and
            98th percentile per band, once per file, from a decimated read. uint8 files are
            never rescaled.
        limits: the caps checked before reading.
    """

    paths: Sequence[str | os.PathLike[str]]
    bands: tuple[int, int, int] | None = None
    scale: tuple[float, float] | None = None
    limits: ReadLimits = field(default_factory=ReadLimits)
    _files: list[_FileInfo] = field(init=False, repr=False)
    #: ``(path, reason)`` of each file that could not be opened (a mosaic goes on without them).
    skipped: list[tuple[str, str]] = field(init=False, repr=False)
    _boxes: np.ndarray = field(init=False, repr=False)
    _stats: dict[str, tuple[np.ndarray, np.ndarray]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        """Check and index every file; skip (with a warning) those that cannot be opened."""
        if isinstance(self.paths, str | os.PathLike):
            self.paths = [self.paths]
        if not self.paths:
            raise ImageryError("no imagery files given; pass at least one GeoTIFF/COG path")
        if self.scale is not None and not (len(self.scale) == 2 and self.scale[1] > self.scale[0]):
            raise ImageryError(f"scale={self.scale!r} is not valid; pass (low, high), low < high")
        self._files, self.skipped = [], []
        for p in self.paths:
            try:
                self._files.append(self._inspect(os.fspath(p)))
            except ImageryError as exc:
                if len(self.paths) == 1:
                    raise
                self.skipped.append((os.fspath(p), str(exc)))
        if not self._files:
            raise ImageryError(
                f"none of the {len(self.paths)} imagery files could be opened; the first: "
                f"{self.skipped[0][1]}"
            )
        if self.skipped:
            warnings.warn(
                f"skipped {len(self.skipped)} of {len(self.paths)} imagery files that cannot be "
                "opened; tiles that may need them will be dead-lettered: "
                + "; ".join(reason for _, reason in self.skipped[:5])
                + (" ..." if len(self.skipped) > 5 else ""),
                UserWarning,
                stacklevel=2,
            )
        self._warn_resolution()
        self._boxes = np.array([f.bounds for f in self._files], dtype=np.float64)
        self._stats = {}

    def _warn_resolution(self) -> None:
        low, high = PLAUSIBLE_RESOLUTION_M
        odd = [f for f in self._files if not low <= f.resolution_m <= high]
        if odd:
            shown = "; ".join(f"{f.name}: {f.resolution_m:.3g} m" for f in odd[:5])
            warnings.warn(
                f"{len(odd)} imagery file(s) have pixels far from the 50 cm the model was trained "
                f"on (outside {low:g}-{high:g} m), so expect few or wrong buildings there: "
                f"{shown}{' ...' if len(odd) > 5 else ''}. Check the georeference (gdalinfo), "
                "or resample the imagery to about 50 cm",
                UserWarning,
                stacklevel=3,
            )

    def _inspect(self, name: str) -> _FileInfo:
        path = gdal_path(name)
        with open_raster(name, path, self.limits) as ds:
            check_georeference(name, ds)
            bands = map_bands(name, ds, self.bands)
            has_alpha = ColorInterp.alpha in ds.colorinterp
            try:
                bounds = _footprint_lonlat(ds)
            except GDAL_ERRORS as exc:
                raise ImageryError(
                    f"imagery file {name}: its CRS cannot be transformed to "
                    f"lon/lat ({exc}); reproject it to a standard CRS"
                ) from exc
            return _FileInfo(
                name,
                path,
                bands,
                ds.dtypes[bands[0] - 1],
                add_alpha=ds.nodata is None and not has_alpha,
                bounds=bounds,
                resolution_m=ground_resolution_m(bounds, ds.width, ds.height),
            )

    def bounds_lonlat(self) -> tuple[float, float, float, float]:
        """Return the union of the files' footprints ``(west, south, east, north)`` in degrees."""
        b = self._boxes
        return (
            float(b[:, 0].min()),
            float(b[:, 1].min()),
            float(b[:, 2].max()),
            float(b[:, 3].max()),
        )

    def read(self, grid: PixelGrid) -> TileImage:
        """Read the tile on ``grid``, averaging when downsampling.

        Args:
            grid: the target grid (north-up, metric CRS).

        Returns:
            The tile; pixels no file covers are ``valid=False``.

        Raises:
            ImageryError: if a file cannot be read.
        """
        rgb = np.zeros((3, grid.height, grid.width), dtype=np.uint8)
        valid = np.zeros((grid.height, grid.width), dtype=bool)
        w, s, e, n = grid_bounds_lonlat(grid)
        b = self._boxes
        hits = np.flatnonzero((b[:, 0] <= e) & (b[:, 2] >= w) & (b[:, 1] <= n) & (b[:, 3] >= s))
        for i in hits:
            data, ok = self._read_file(self._files[i], grid)
            take = ok & ~valid
            rgb[:, take] = data[:, take]
            valid |= take
            if valid.all():
                break
        if self.skipped and not valid.all():
            # An unopenable file's footprint is unknown, so any pixel left without imagery may be
            # one of its pixels: the tile is not finished silently with a hole in it.
            names = ", ".join(os.path.basename(p) for p, _ in self.skipped[:5])
            raise ImageryError(
                f"{int((~valid).sum())} pixels of this tile have no imagery, and "
                f"{len(self.skipped)} file(s) of the mosaic could not be opened ({names}"
                f"{' ...' if len(self.skipped) > 5 else ''}), so they may lie there: "
                f"{self.skipped[0][1]}. Replace or remove those files, then run again "
                "with --resume"
            )
        return TileImage(rgb=rgb, valid=valid, grid=grid)

    def _read_file(self, info: _FileInfo, grid: PixelGrid) -> tuple[np.ndarray, np.ndarray]:
        env = REMOTE_ENV if on_network(info.path) else {}
        try:
            with rasterio.Env(**env), open_raster(info.name, info.path, self.limits) as ds:
                with WarpedVRT(
                    ds,
                    crs=grid.crs,
                    transform=grid.transform,
                    width=grid.width,
                    height=grid.height,
                    resampling=Resampling.average,
                    add_alpha=info.add_alpha,
                ) as vrt:
                    data = vrt.read(indexes=list(info.bands))
                    ok = vrt.dataset_mask() > 0
                if np.issubdtype(data.dtype, np.floating):
                    ok &= ~np.isnan(data).any(axis=0)
                if data.dtype != np.uint8:
                    low, high = self._scale_for(info, ds)
                    data = to_uint8(data, low, high)
        except GDAL_ERRORS as exc:
            raise ImageryError(
                f"imagery file {info.name} could not be read: "
                f"{gdal_message(exc)}. The file "
                "may be corrupt or truncated; check it with gdalinfo -checksum"
            ) from exc
        return data, ok

    def _scale_for(
        self, info: _FileInfo, ds: rasterio.DatasetReader
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.scale is not None:
            return np.full(3, self.scale[0]), np.full(3, self.scale[1])
        if info.path not in self._stats:
            self._stats[info.path] = percentile_stats(ds, info.bands)
        return self._stats[info.path]


def percentile_stats(
    ds: rasterio.DatasetReader, bands: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Compute the 2nd and 98th percentile of each band from a decimated read.

    The read is at most about 1024 pixels on its longest side, so GDAL uses an overview when the
    file has one.

    Args:
        ds: the open dataset.
        bands: the 1-based bands to measure.

    Returns:
        ``(low, high)``, each an array of 3 values; ``(0, 1)`` for a band with no valid pixel.
    """
    factor = max(1, math.ceil(max(ds.width, ds.height) / _STATS_SIZE))
    shape = (3, max(1, ds.height // factor), max(1, ds.width // factor))
    data = ds.read(indexes=list(bands), out_shape=shape, masked=True)
    low, high = np.zeros(3), np.ones(3)
    for i in range(3):
        values = data[i].compressed().astype(np.float64)
        values = values[np.isfinite(values)]
        if values.size:
            low[i], high[i] = np.percentile(values, [2, 98])
            if high[i] <= low[i]:
                high[i] = low[i] + 1
    return low, high
