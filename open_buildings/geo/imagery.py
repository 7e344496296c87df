"""Imagery sources: read the pixels of one tile, resampled to 50 cm in the tile's metric CRS.

Three kinds of source give the same :class:`ImagerySource` interface:

- :class:`RasterSource`: one or many GeoTIFF/COG files (or JPEG/PNG with a georeferencing
  sidecar), local or at ``gs://``, ``s3://`` or ``https://``; a mosaic where the first file with
  valid data at a pixel wins;
- :class:`XYZSource`: slippy-map tiles, a folder (``OAM-x-y-z.ext`` or ``z/x/y.ext``) or a
  ``{z}/{x}/{y}`` template;
- :class:`StacSource`: a STAC Item or ItemCollection JSON whose assets are COGs.

Every source returns a :class:`TileImage`: RGB uint8 ``(3, H, W)`` and a ``valid`` mask.
Downsampling averages. Bands are mapped to RGB explicitly, from colour interpretation or from
``bands=(r, g, b)``; a file whose bands are ambiguous is an :class:`ImageryError`, never taken as
RGB silently. User files are hostile: only the GTiff, JPEG, PNG and WEBP drivers may open them,
their declared size is checked against :class:`ReadLimits` before any read, and GDAL virtual
paths and URL schemes other than ``gs``, ``s3`` and ``https`` are refused.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from open_buildings.errors import ImageryError
from open_buildings.geo.imagery_raster import ImagerySource, RasterSource, TileImage
from open_buildings.geo.imagery_stac import StacSource
from open_buildings.geo.imagery_xyz import XYZSource, scan_tiles
from open_buildings.geo.raster_open import ReadLimits, gdal_path

__all__ = [
    "ImagerySource",
    "RasterSource",
    "ReadLimits",
    "StacSource",
    "TileImage",
    "XYZSource",
    "gdal_path",
    "open_imagery",
]

_RASTER_EXTS = (".tif", ".tiff")


def open_imagery(
    spec: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    bands: tuple[int, int, int] | None = None,
    scale: tuple[float, float] | None = None,
    limits: ReadLimits | None = None,
) -> ImagerySource:
    """Open imagery from what a user points at.

    - a list of files -> :class:`RasterSource` (a mosaic, first file wins);
    - ``*.json`` -> :class:`StacSource` (Item or ItemCollection);
    - a string with ``{z}``, ``{x}``, ``{y}`` -> :class:`XYZSource` template;
    - a folder holding ``.tif``/``.tiff`` files -> :class:`RasterSource` over them (sorted);
    - a folder of ``OAM-x-y-z.ext`` or ``z/x/y.ext`` tiles -> :class:`XYZSource`;
    - a file or a ``gs://``, ``s3://``, ``https://`` URL -> :class:`RasterSource`.

    Args:
        spec: a path, URL, template, or a sequence of paths/URLs.
        bands: explicit 1-based ``(r, g, b)`` band indexes; None maps from colour interpretation.
        scale: ``(low, high)`` stretched to 0..255 for non-uint8 imagery; None uses each file's
            2nd-98th percentiles.
        limits: caps on declared sizes; None uses :class:`ReadLimits` defaults.

    Returns:
        The imagery source.

    Raises:
        ImageryError: if the spec is not allowed, does not exist, or holds no usable imagery.
    """
    limits = limits or ReadLimits()
    if not isinstance(spec, str | os.PathLike):
        paths = [os.fspath(p) for p in spec]
        return RasterSource(paths, bands=bands, scale=scale, limits=limits)
    text = os.fspath(spec)
    if "{z}" in text:
        return XYZSource(text, bands=bands, limits=limits)
    path = gdal_path(text)  # refuses /vsi, odd schemes and GDAL syntax before touching anything
    if text.lower().endswith(".json"):
        return StacSource(text, bands=bands, scale=scale, limits=limits)
    if os.path.isdir(path):
        rasters = sorted(
            str(p) for p in Path(path).iterdir() if p.suffix.lower() in _RASTER_EXTS and p.is_file()
        )
        if rasters:
            return RasterSource(rasters, bands=bands, scale=scale, limits=limits)
        if scan_tiles(path):
            return XYZSource(path, bands=bands, limits=limits)
        raise ImageryError(
            f"folder {text} holds no .tif/.tiff files and no XYZ tiles "
            "(OAM-x-y-z.png or z/x/y.png); point at the imagery itself"
        )
    return RasterSource([text], bands=bands, scale=scale, limits=limits)
