"""Imagery of one region at several dates, read onto the same tile grid as a time stack.

A user names each date's imagery (``2011-05-20=pre/``: any source :func:`open_imagery` takes) or
gives one STAC ItemCollection whose items carry ``datetime``: its items are grouped by day. Every
date is read onto the tile's one 50 cm grid, so pixel ``(y, x)`` is the same ground at every
date; dates that do not cover a tile (or part of it) say so in their ``valid`` mask.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pystac

from open_buildings.errors import ImageryError
from open_buildings.geo.grid import PixelGrid
from open_buildings.geo.imagery import open_imagery
from open_buildings.geo.imagery_raster import ImagerySource, RasterSource, TileImage
from open_buildings.geo.imagery_stac import pick_asset, read_items, resolve_href
from open_buildings.geo.raster_open import ReadLimits

__all__ = ["DatedImagery", "TimeStack", "open_dated_imagery", "parse_dated_spec"]


@dataclass(frozen=True)
class TimeStack:
    """One tile at every date, on one grid.

    Attributes:
        dates: the dates, oldest first.
        rgb: uint8 array ``(T, 3, H, W)``.
        valid: bool array ``(T, H, W)``: False where that date has no imagery.
        grid: the grid every date was read onto.
    """

    dates: tuple[datetime.date, ...]
    rgb: np.ndarray
    valid: np.ndarray
    grid: PixelGrid

    def image(self, index: int) -> TileImage:
        """The tile at date ``index`` as a single-date :class:`TileImage`."""
        return TileImage(self.rgb[index], self.valid[index], self.grid)

    @property
    def covered(self) -> np.ndarray:
        """bool ``(T,)``: whether each date has any valid pixel in the tile."""
        return self.valid.reshape(len(self.dates), -1).any(axis=1)


class DatedImagery:
    """Several dated imagery sources of one region; :meth:`read` returns a :class:`TimeStack`."""

    def __init__(
        self,
        sources: Sequence[tuple[datetime.date, ImagerySource]],
        specs: Sequence[str | list[dict]],
    ) -> None:
        """Keep ``sources`` oldest first.

        Args:
            sources: each date's imagery.
            specs: what each source was opened from, in the order of ``sources``: a spec
                :func:`open_imagery` takes, or a day's STAC items (dicts, hrefs absolute).

        Raises:
            ImageryError: no source, or two sources with the same date.
        """
        if not sources:
            raise ImageryError("no dated imagery given; pass --imagery DATE=SOURCE per date")
        ordered = sorted(zip(sources, specs), key=lambda s: s[0][0])
        dates = [d for (d, _), _ in ordered]
        twice = sorted({d for d in dates if dates.count(d) > 1})
        if twice:
            raise ImageryError(
                f"two imagery sources share the date {twice[0].isoformat()}; give one source per "
                "date (a folder or a list of files makes one mosaic)"
            )
        self.dates: tuple[datetime.date, ...] = tuple(dates)
        self.sources: tuple[ImagerySource, ...] = tuple(s for (_, s), _ in ordered)
        self._specs = [spec for _, spec in ordered]

    def specs(self, folder: str | os.PathLike[str]) -> list[str]:
        """Each date's imagery as one ``ob-infer --imagery`` spec, oldest first; a STAC day is
        written to ``folder/<date>.json`` as its own ItemCollection."""
        out = []
        for day, spec in zip(self.dates, self._specs):
            if isinstance(spec, list):
                path = Path(folder) / f"{day.isoformat()}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                doc = {"type": "FeatureCollection", "features": spec}
                path.write_text(json.dumps(doc), encoding="utf-8")
                spec = str(path)
            out.append(spec)
        return out

    def read(self, grid: PixelGrid) -> TimeStack:
        """Read every date onto ``grid``."""
        images = [source.read(grid) for source in self.sources]
        return TimeStack(
            self.dates,
            np.stack([im.rgb for im in images]),
            np.stack([im.valid for im in images]),
            grid,
        )

    def bounds_lonlat(self) -> tuple[float, float, float, float]:
        """The union of every date's footprint ``(west, south, east, north)`` in degrees."""
        boxes = np.array([s.bounds_lonlat() for s in self.sources])
        return (
            float(boxes[:, 0].min()),
            float(boxes[:, 1].min()),
            float(boxes[:, 2].max()),
            float(boxes[:, 3].max()),
        )


def parse_dated_spec(text: str) -> tuple[datetime.date, str]:
    """Split ``"2011-05-20=pre/"`` into the date and the imagery spec.

    Raises:
        ImageryError: no ``=``, or a date that is not ``YYYY-MM-DD``.
    """
    day, sep, spec = text.partition("=")
    if not sep or not spec:
        raise ImageryError(
            f"imagery {text!r} has no date; write DATE=SOURCE (e.g. 2011-05-20=pre/) for each "
            "date, or give one STAC ItemCollection whose items carry datetime"
        )
    try:
        return datetime.date.fromisoformat(day.strip()), spec
    except ValueError:
        raise ImageryError(
            f"imagery {text!r}: {day!r} is not a date; write it as YYYY-MM-DD"
        ) from None


def open_dated_imagery(
    specs: Sequence[str | os.PathLike[str]],
    *,
    bands: tuple[int, int, int] | None = None,
    scale: tuple[float, float] | None = None,
    limits: ReadLimits | None = None,
) -> DatedImagery:
    """Open ``DATE=SOURCE`` specs, or one STAC ItemCollection grouped by its items' days.

    Args:
        specs: ``["2011-05-20=pre/", "2011-05-24=post/"]`` or ``["catalog.json"]``.
        bands: as :func:`open_imagery`, for every date.
        scale: as :func:`open_imagery`, for every date.
        limits: as :func:`open_imagery`, for every date.

    Returns:
        The dated imagery, oldest first.

    Raises:
        ImageryError: a spec without a date (other than one STAC file), a STAC item without a
            date (pystac's check), two sources of one date, or imagery :func:`open_imagery`
            refuses.
    """
    texts = [os.fspath(s) for s in specs]
    limits = limits or ReadLimits()
    if len(texts) == 1 and "=" not in texts[0] and texts[0].lower().endswith(".json"):
        return _stac_by_day(texts[0], bands=bands, scale=scale, limits=limits)
    sources, given = [], []
    for text in texts:
        day, spec = parse_dated_spec(text)
        sources.append((day, open_imagery(spec, bands=bands, scale=scale, limits=limits)))
        given.append(spec)
    return DatedImagery(sources, given)


def _stac_by_day(
    path: str,
    *,
    bands: tuple[int, int, int] | None,
    scale: tuple[float, float] | None,
    limits: ReadLimits,
) -> DatedImagery:
    base = os.path.dirname(os.path.abspath(path))
    by_day: dict[datetime.date, list[pystac.Item]] = {}
    for item in read_items(path):
        when = item.datetime or item.common_metadata.start_datetime  # pystac requires one
        by_day.setdefault(when.date(), []).append(item)
    sources, given = [], []
    for day, items in by_day.items():
        hrefs = [resolve_href(pick_asset(item).href, base) for item in items]
        sources.append((day, RasterSource(hrefs, bands=bands, scale=scale, limits=limits)))
        docs = []
        for item in items:
            doc = item.to_dict(transform_hrefs=False)
            for asset in doc["assets"].values():
                asset["href"] = resolve_href(asset["href"], base)
            docs.append(doc)
        given.append(docs)
    return DatedImagery(sources, given)
