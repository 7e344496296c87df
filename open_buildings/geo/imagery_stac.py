"""Imagery described by a STAC Item or ItemCollection JSON whose assets are COGs.

Import from :mod:`open_buildings.geo.imagery`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import pystac

from open_buildings.errors import ImageryError
from open_buildings.geo.grid import PixelGrid
from open_buildings.geo.imagery_raster import RasterSource, TileImage
from open_buildings.geo.raster_open import SCHEME, ReadLimits

_MAX_JSON_BYTES = 64 * 2**20
_PREFERRED_KEYS = ("visual", "image")


def pick_asset(item: pystac.Item, asset: str | None = None) -> pystac.Asset:
    """Choose the imagery asset of a STAC Item.

    Args:
        item: the item.
        asset: an explicit asset key; None picks ``visual``, then ``image``, then the first asset
            with role ``data``.

    Returns:
        The chosen asset.

    Raises:
        ImageryError: if no asset fits.
    """
    assets = item.assets
    if asset is not None:
        if asset not in assets:
            raise ImageryError(
                f"STAC item {item.id!r} has no asset {asset!r}; it has {sorted(assets)}"
            )
        return assets[asset]
    for key in _PREFERRED_KEYS:
        if key in assets:
            return assets[key]
    for value in assets.values():
        if "data" in (value.roles or []):
            return value
    raise ImageryError(
        f"STAC item {item.id!r} has no asset keyed 'visual' or 'image' and none "
        f"with role 'data' (assets: {sorted(assets)}); pass asset='<key>'"
    )


def resolve_href(href: str, base_dir: str) -> str:
    """An asset's href made absolute against the STAC file's folder (URLs kept as they are)."""
    if SCHEME.match(href) or os.path.isabs(href) or href.lstrip().startswith("<"):
        return href  # checked by gdal_path when the RasterSource opens it
    return os.path.normpath(os.path.join(base_dir, href))


def read_items(path: str | os.PathLike[str]) -> list[pystac.Item]:
    """The items of a local STAC Item or ItemCollection JSON file, checked.

    Raises:
        ImageryError: a missing, oversized or invalid file, or one that holds no items.
    """
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise ImageryError(f"STAC file {name} does not exist")
    if os.path.getsize(name) > _MAX_JSON_BYTES:
        raise ImageryError(
            f"STAC file {name} is over {_MAX_JSON_BYTES // 2**20} MiB; "
            "split it into smaller ItemCollections"
        )
    try:
        with open(name, encoding="utf-8") as fh:
            doc = json.load(fh)
        kind = doc.get("type") if isinstance(doc, dict) else None
        if kind == "Feature":
            items = [pystac.Item.from_dict(doc)]
        elif kind == "FeatureCollection":
            items = list(pystac.ItemCollection.from_dict(doc).items)
        else:
            raise ImageryError(
                f"STAC file {name} is not an Item or ItemCollection "
                f"(type {kind!r}); pass an Item or ItemCollection JSON"
            )
    except (ValueError, KeyError, TypeError, pystac.STACError) as exc:
        if isinstance(exc, ImageryError):
            raise
        raise ImageryError(f"STAC file {name} is not valid STAC JSON: {exc}") from exc
    if not items:
        raise ImageryError(f"STAC file {name} holds no items")
    return items


@dataclass
class StacSource:
    """A mosaic of the COG assets of a STAC Item or ItemCollection (a local JSON file).

    Relative hrefs are resolved against the JSON file's folder. Items earlier in the collection
    win where they overlap.

    Attributes:
        path: the Item or ItemCollection JSON file.
        asset: an explicit asset key; None picks ``visual``, ``image`` or the role ``data``.
        bands: explicit 1-based ``(r, g, b)`` for every asset.
        scale: ``(low, high)`` for non-uint8 assets (see :class:`RasterSource`).
        limits: caps checked before reading.
    """

    path: str | os.PathLike[str]
    asset: str | None = None
    bands: tuple[int, int, int] | None = None
    scale: tuple[float, float] | None = None
    limits: ReadLimits = field(default_factory=ReadLimits)
    hrefs: list[str] = field(init=False)
    _raster: RasterSource = field(init=False, repr=False)

    def __post_init__(self) -> None:
        """Read the JSON, pick each item's asset and open them as a mosaic."""
        name = os.fspath(self.path)
        items = read_items(name)
        base = os.path.dirname(os.path.abspath(name))
        self.hrefs = [resolve_href(pick_asset(item, self.asset).href, base) for item in items]
        self._raster = RasterSource(
            self.hrefs, bands=self.bands, scale=self.scale, limits=self.limits
        )

    def read(self, grid: PixelGrid) -> TileImage:
        """Read the tile on ``grid`` from the items' assets (see :meth:`RasterSource.read`).

        Args:
            grid: the target grid.

        Returns:
            The tile.
        """
        return self._raster.read(grid)

    def bounds_lonlat(self) -> tuple[float, float, float, float]:
        """Return the union of the assets' footprints ``(west, south, east, north)`` in degrees."""
        return self._raster.bounds_lonlat()
