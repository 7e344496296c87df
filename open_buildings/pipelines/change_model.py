"""A trained two-date change model in ``ob-change``: change probability per tile and date pair,
and each tracked building's change confidence.

For every tile that ``ob-change`` wrote a presence raster of, each pair of consecutive dates is
read onto the tile's grid (:meth:`DatedImagery.read`) and run through the change model
(``change_unet_*``; :func:`open_buildings.pipelines.forward.run_model`, the pipeline's padding).
``change_probability/<tile>.tif`` holds a band per pair, the change probability times 250
(nodata 255 where either date had no imagery).

A building's ``change_confidence`` is the mean change probability inside its footprint, over the
pair in which the footprint matching puts its change (``new``: the date before ``first_seen`` to
``first_seen``; ``removed``: ``last_seen`` to the date after), or the largest over every pair for
an ``unchanged`` building. It is NaN where the pair had no imagery. The matching decides the
label; the model says how much to trust it.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.features import rasterize
from scipy import ndimage

from open_buildings.errors import ConfigError
from open_buildings.geo import cells
from open_buildings.geo.grid import GridSpec, PixelGrid
from open_buildings.geo.imagery_dates import DatedImagery
from open_buildings.pipelines.forward import run_model
from open_buildings.pipelines.presence import PRESENCE_FOLDER
from open_buildings.pipelines.probabilities import NODATA, SCALE, write_probabilities

__all__ = ["CHANGE_FOLDER", "building_change_confidence", "check_change_model",
           "write_change_probabilities"]  # fmt: skip

CHANGE_FOLDER = "change_probability"


def check_change_model(model: Any, source: str) -> int:
    """Return the index of ``model``'s change channel.

    Raises:
        ConfigError: the model has no change head (a single-date building model).
    """
    channels = tuple(getattr(model, "output_channels", ()))
    if "change" not in channels:
        raise ConfigError(
            f"--change-model {source} is a {getattr(model, 'name', '?')} model with outputs "
            f"{channels}; it needs a two-date change model (change_unet_*, trained with "
            "ob-train pipelines/change/train.yaml)"
        )
    return channels.index("change")


def write_change_probabilities(
    model: Any, dated: DatedImagery, out: str | os.PathLike[str], *, bf16: bool = False
) -> list[Path]:
    """Write ``out/change_probability/<tile>.tif`` for every tile of ``out/presence/``.

    Args:
        model: a change model (see :func:`check_change_model`), on the CPU or its device.
        dated: the dated imagery ``ob-change`` ran on.
        out: the ``ob-change`` output folder.
        bf16: run under bfloat16 autocast.

    Returns:
        The files written, sorted by tile.
    """
    channel = check_change_model(model, str(getattr(model, "name", "?")))
    names = tuple(f"{a.isoformat()}/{b.isoformat()}" for a, b in zip(dated.dates, dated.dates[1:]))
    device = next(model.parameters()).device
    written = []
    for path in sorted((Path(out) / PRESENCE_FOLDER).glob("*.tif")):
        with rasterio.open(path) as src:
            grid = PixelGrid(src.crs.to_string(), src.transform, src.width, src.height)
        stack = dated.read(grid)
        logits = np.zeros((len(names), grid.height, grid.width), dtype=np.float32)
        valid = stack.valid[:-1] & stack.valid[1:]
        for k in np.flatnonzero(valid.reshape(len(names), -1).any(axis=1)):
            pair = np.concatenate([stack.rgb[k], stack.rgb[k + 1]])
            logits[k] = run_model(model, [pair], device=device, bf16=bf16)[0][channel]
        target = write_probabilities(logits, valid, grid, str(out), path.stem, names,
                                     folder=CHANGE_FOLDER)  # fmt: skip
        written.append(Path(target))
    return written


def building_change_confidence(
    buildings: gpd.GeoDataFrame,
    dates: Sequence[datetime.date],
    out: str | os.PathLike[str],
    spec: GridSpec | None = None,
) -> np.ndarray:
    """Each tracked building's ``change_confidence`` (see the module docstring), read from the
    rasters :func:`write_change_probabilities` wrote; float ``(len(buildings),)``."""
    spec = spec or GridSpec()
    index = {d.isoformat(): k for k, d in enumerate(dates)}
    pairs = len(dates) - 1
    result = np.full(len(buildings), np.nan)
    if not len(buildings):
        return result
    tiles = cells.cell_tokens(buildings["longitude"], buildings["latitude"], spec.level)
    for tile in np.unique(tiles):
        path = Path(out) / CHANGE_FOLDER / f"{tile}.tif"
        if not path.exists():
            continue
        pick = np.flatnonzero(tiles == tile)
        with rasterio.open(path) as src:
            bands, crs, transform = src.read(), src.crs, src.transform
        shapes = gpd.GeoSeries(buildings.geometry.iloc[pick].to_numpy(), crs=buildings.crs)
        ids = rasterize(
            [(g, i + 1) for i, g in enumerate(shapes.to_crs(crs))],
            out_shape=bands.shape[1:], transform=transform, dtype="int32",
        )  # fmt: skip
        labels = np.arange(1, len(pick) + 1)
        means = np.full((pairs, len(pick)), np.nan)
        for k in range(pairs):
            has = bands[k] != NODATA
            total = ndimage.sum_labels(np.where(has, bands[k] / SCALE, 0.0), ids, labels)
            count = ndimage.sum_labels(has, ids, labels)
            means[k] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        rows = buildings.iloc[pick]
        for j, (change, first, last) in enumerate(
            zip(rows["change"], rows["first_seen"], rows["last_seen"])
        ):
            if change == "new" and index[first] > 0:
                result[pick[j]] = means[index[first] - 1, j]
            elif change == "removed" and index[last] < pairs:
                result[pick[j]] = means[index[last], j]
            elif change == "unchanged" and not np.isnan(means[:, j]).all():
                result[pick[j]] = np.nanmax(means[:, j])
    return result
