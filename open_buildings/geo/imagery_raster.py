"""GeoTIFF/COG imagery: safe opening, band mapping, scaling, and the mosaic source.

Import from :mod:`open_buildings.geo.imagery`; this module holds the pieces that the XYZ and STAC
sources share with :class:`RasterSource`.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds

from open_buildings.errors import ImageryError
from open_buildings.geo.grid import PixelGrid

try:  # GDAL errors surface as CPLE_* exceptions; they are not all RasterioError subclasses.
    from rasterio._err import CPLE_BaseError
except ImportError:  # pragma: no cover - rasterio moved it
    CPLE_BaseError = RasterioError  # type: ignore[misc,assignment]

#: Errors from rasterio/GDAL that are turned into an ImageryError naming the file.
GDAL_ERRORS: tuple[type[BaseException], ...] = (RasterioError, CPLE_BaseError)
#: The only raster drivers a user file may be opened with (so a VRT named .tif is not followed).
ALLOWED_DRIVERS = ("GTiff", "JPEG", "PNG", "WEBP")
#: Drivers that decode the whole image to read any window of it.
WHOLE_IMAGE_DRIVERS = ("JPEG", "PNG", "WEBP")
_REMOTE = {"gs": "/vsigs/", "s3": "/vsis3/", "https": "/vsicurl/"}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-_]*):")
_STATS_SIZE = 1024  # the longest side of the decimated read used for scaling statistics
_REMOTE_ENV = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_TIMEOUT": "60",
    "GDAL_HTTP_MAX_RETRY": "3",
}


@dataclass(frozen=True)
class ReadLimits:
    """Caps checked against what a file *declares*, before any pixel is read.

    Attributes:
        max_total_bytes: width x height x bands x bytes per sample of one file (default 1 TiB).
        max_block_bytes: bytes of one block or strip, which GDAL decodes whole for any window that
            touches it; for JPEG/PNG/WEBP files, the whole image (default 512 MiB).
        max_bands: the most bands a file may have (default 16).
    """

    max_total_bytes: int = 2**40
    max_block_bytes: int = 512 * 2**20
    max_bands: int = 16


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


def gdal_path(spec: str | os.PathLike[str]) -> str:
    """Check a user-supplied path and return the path GDAL should open.

    Local paths are returned as they are. ``gs://``, ``s3://`` and ``https://`` URLs map to
    ``/vsigs/``, ``/vsis3/`` and ``/vsicurl/``. Anything else that GDAL would interpret specially
    (``/vsi...`` paths, other URL schemes, ``DRIVER:...`` prefixes, inline XML, ``?`` options) is
    refused.

    Args:
        spec: a local path or a ``gs://``, ``s3://`` or ``https://`` URL.

    Returns:
        The path to hand to GDAL.

    Raises:
        ImageryError: if the path is not allowed.
    """
    text = os.fspath(spec)
    if not isinstance(text, str) or not text.strip():
        raise ImageryError(f"imagery path {spec!r} is empty; pass a file, folder or URL")
    if any(ord(ch) < 32 for ch in text) or text.lstrip().startswith("<"):
        raise ImageryError(
            f"imagery path {text!r} contains control characters or inline XML; "
            "pass a plain file path or a gs://, s3:// or https:// URL"
        )
    if "/vsi" in text.lower():
        raise ImageryError(
            f"imagery path {text!r} is a GDAL virtual path (/vsi...), which is not "
            "allowed; pass a local path or a gs://, s3:// or https:// URL instead"
        )
    match = _SCHEME.match(text)
    if match and not re.match(r"^[A-Za-z]:[\\/]", text):
        scheme = match.group(1).lower()
        rest = text[match.end() :]
        if scheme not in _REMOTE or not rest.startswith("//"):
            hint = " (use https://)" if scheme == "http" else ""
            raise ImageryError(
                f"imagery path {text!r} uses {scheme + ':'!r}, which is not allowed"
                f"{hint}; only local paths and gs://, s3:// and https:// URLs are"
            )
        host_key = rest[2:]
        if "/" not in host_key or host_key.startswith("/") or host_key.endswith("/"):
            raise ImageryError(
                f"imagery URL {text!r} names no object; expected "
                f"{scheme}://bucket-or-host/path/to/file"
            )
        if scheme != "https" and ("?" in host_key or "#" in host_key):
            raise ImageryError(f"imagery URL {text!r} contains '?' or '#'; remove them")
        return _REMOTE[scheme] + (text if scheme == "https" else host_key)
    if "?" in text or "#" in text:
        raise ImageryError(
            f"imagery path {text!r} contains '?' or '#', which GDAL may read as "
            "options; rename the file"
        )
    return text


def is_remote(path: str) -> bool:
    """Return True for a path :func:`gdal_path` mapped to a network location."""
    return path.startswith(tuple(_REMOTE.values()))


@contextmanager
def open_raster(name: str, path: str, limits: ReadLimits) -> Iterator[rasterio.DatasetReader]:
    """Open a raster with an allowed driver and check its declared size against ``limits``.

    Args:
        name: the path as the user gave it, for messages.
        path: the GDAL path from :func:`gdal_path`.
        limits: the caps to check.

    Yields:
        The open dataset; it is closed on exit.

    Raises:
        ImageryError: if the file is missing, not an allowed format, or over a cap.
    """
    if not is_remote(path) and not os.path.isfile(path):
        raise ImageryError(f"imagery file {name} does not exist or is not a file")
    env = _REMOTE_ENV if is_remote(path) else {}
    ds = None
    errors = []
    with rasterio.Env(**env), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        for driver in ALLOWED_DRIVERS:
            try:
                ds = rasterio.open(path, driver=driver)
                break
            except GDAL_ERRORS as exc:
                errors.append(str(exc))
            except IndexError as exc:  # rasterio's answer for a dataset with no bands
                errors.append(str(exc))
        if ds is None:
            detail = f" (GDAL said: {errors[0]})" if is_remote(path) and errors else ""
            raise ImageryError(
                f"imagery file {name} is not in an allowed raster format "
                f"({', '.join(ALLOWED_DRIVERS)}); VRT, HDF5, NetCDF and other formats are refused. "
                f"Convert it to a Cloud-Optimized GeoTIFF (gdal_translate -of COG){detail}"
            )
        try:
            check_limits(name, ds, limits)
            yield ds
        finally:
            ds.close()


def check_limits(name: str, ds: rasterio.DatasetReader, limits: ReadLimits) -> None:
    """Check a dataset's declared bands, total size and block size against ``limits``.

    Args:
        name: the file name, for messages.
        ds: the open dataset (only its header is used).
        limits: the caps.

    Raises:
        ImageryError: if a cap is exceeded or the file has no bands.
    """
    if ds.count == 0:
        raise ImageryError(
            f"imagery file {name} has no raster bands (only subdatasets?); "
            "convert the band you need to a GeoTIFF"
        )
    if ds.count > limits.max_bands:
        raise ImageryError(
            f"imagery file {name} declares {ds.count} bands, over the cap of "
            f"{limits.max_bands}; extract the RGB bands or raise max_bands"
        )
    itemsize = max(np.dtype(dt).itemsize for dt in ds.dtypes)
    total = ds.width * ds.height * ds.count * itemsize
    if total > limits.max_total_bytes:
        raise ImageryError(
            f"imagery file {name} declares {ds.width} x {ds.height} x {ds.count} "
            f"bands = {total / 2**30:.1f} GiB, over the cap of "
            f"{limits.max_total_bytes / 2**30:.1f} GiB; split it or raise "
            "max_total_bytes"
        )
    if ds.driver in WHOLE_IMAGE_DRIVERS:
        block, what = total, f"a {ds.driver} image, decoded whole,"
    else:
        rows, cols = ds.block_shapes[0]
        per_block = ds.count if ds.interleaving in (None, rasterio.enums.Interleaving.pixel) else 1
        block, what = rows * cols * itemsize * per_block, f"one block/strip ({cols} x {rows})"
    if block > limits.max_block_bytes:
        raise ImageryError(
            f"imagery file {name}: {what} is {block / 2**20:.0f} MiB, over the cap "
            f"of {limits.max_block_bytes / 2**20:.0f} MiB; re-tile it "
            "(gdal_translate -of COG) or raise max_block_bytes"
        )


def check_georeference(name: str, ds: rasterio.DatasetReader) -> None:
    """Refuse a dataset without a CRS and an affine geotransform.

    Args:
        name: the file name, for messages.
        ds: the open dataset.

    Raises:
        ImageryError: if the file is not georeferenced by a CRS and a geotransform.
    """
    if ds.crs is None or ds.transform == Affine.identity():
        if ds.gcps[0] or ds.rpcs:
            raise ImageryError(
                f"imagery file {name} is georeferenced only by GCPs or RPCs; "
                "warp it first (gdalwarp -t_srs EPSG:... in.tif out.tif)"
            )
        raise ImageryError(
            f"imagery file {name} has no georeference (no CRS or geotransform). If it is a "
            "slippy-map tile, open its folder as an XYZ source (files named z/x/y.ext or "
            "OAM-x-y-z.ext); otherwise add a .aux.xml/.wld sidecar or georeference it"
        )


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
        "interpretation does not say which are red, green and blue; pass bands=(r, g, b) "
        "(1-based, e.g. bands=(1, 1, 1) for a single grey band)"
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


def _footprint_lonlat(ds: rasterio.DatasetReader) -> tuple[float, float, float, float]:
    corners = [ds.transform @ (c, r) for c in (0, ds.width) for r in (0, ds.height)]
    xs, ys = zip(*corners)
    return transform_bounds(ds.crs, "EPSG:4326", min(xs), min(ys), max(xs), max(ys), densify_pts=21)


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
    files overlap, the first file with valid data at a pixel wins.

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
    _boxes: np.ndarray = field(init=False, repr=False)
    _stats: dict[str, tuple[np.ndarray, np.ndarray]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        """Check and index every file."""
        if isinstance(self.paths, str | os.PathLike):
            self.paths = [self.paths]
        if not self.paths:
            raise ImageryError("no imagery files given; pass at least one GeoTIFF/COG path")
        if self.scale is not None and not (len(self.scale) == 2 and self.scale[1] > self.scale[0]):
            raise ImageryError(f"scale={self.scale!r} is not valid; pass (low, high), low < high")
        self._files = [self._inspect(os.fspath(p)) for p in self.paths]
        self._boxes = np.array([f.bounds for f in self._files], dtype=np.float64)
        self._stats = {}

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
        return TileImage(rgb=rgb, valid=valid, grid=grid)

    def _read_file(self, info: _FileInfo, grid: PixelGrid) -> tuple[np.ndarray, np.ndarray]:
        env = _REMOTE_ENV if is_remote(info.path) else {}
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
                f"{str(exc).rstrip('.')}. The file "
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
