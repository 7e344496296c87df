"""Post-processing of one tile's model output: decode, polygonize, keep what the tile owns.

A tile's logits become instances (``models.heads.decode``), the instances become lon/lat polygons
(``geo.polygonize``), and a polygon is kept only if its centroid lies in the tile's core
(``grid.Tile.owns``), so a building that the margin lets two tiles see is written by one. Rows are
then put in a total order that depends only on their values (:func:`canonical_order`), because a
retried bundle and a resumed run must write the same bytes. ``ob-infer`` and training validation
both call :func:`owned_footprints`.
"""

from __future__ import annotations

from collections.abc import Iterator

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from scipy import ndimage as ndi

from open_buildings.geo import cells, footprints, grid, polygonize
from open_buildings.pipelines.config import PostprocessConfig
from open_buildings.pipelines.device_decode import DecodedTile

SHARD_COLUMN = "shard"
#: Sort keys that put footprints in a total order before they are written.
_ORDER = ["latitude", "longitude", "area_in_meters", "confidence"]
FRAME_COLUMNS = [*footprints.SCHEMA_COLUMNS[:5], SHARD_COLUMN]
#: What the functions here apply when given no settings: no confidence floor.
DEFAULT_POSTPROCESS = PostprocessConfig(min_confidence=0.0)


def covered_m2(tile: grid.Tile, valid: np.ndarray) -> int:
    """Return the ground area of the tile's core that has imagery, in whole square metres.

    Args:
        tile: the tile.
        valid: its pixels' mask, True where there is imagery.
    """
    if not valid.any():
        return 0
    core_m2 = float(gpd.GeoSeries([tile.core], crs="EPSG:4326").to_crs(tile.crs).area.iloc[0])
    return round(core_m2 * float(valid.mean()))


def footprints_for_tile(
    tile: grid.Tile,
    logits: np.ndarray | DecodedTile,
    valid: np.ndarray | None = None,
    post: PostprocessConfig = DEFAULT_POSTPROCESS,
    *,
    shard_level: int = 6,
) -> gpd.GeoDataFrame:
    """Turn one tile's logits into the footprints this tile owns.

    Decode the channels into instances (``models.heads.decode``), drop pixels without imagery,
    polygonize, keep the buildings whose centroid lies in the tile's core (so a building the
    margin lets two tiles see is written by exactly one), drop those below
    ``post.min_confidence``, and add the shard key.

    Args:
        tile: the tile.
        logits: the model's output (C, H, W) on ``tile.grid``, or the tile already decoded on
            the model's device (``device_decode``).
        valid: bool (H, W), False where there is no imagery; None means all valid.
        post: the confidence floor, simplification and minimum area.
        shard_level: S2 level of the shard key.

    Returns:
        See :func:`owned_footprints`.
    """
    from open_buildings.models import heads

    if isinstance(logits, DecodedTile):
        labels, confidence = logits.labels.astype(np.int32), logits.confidence
    else:
        labels, confidence = heads.decode(logits, from_logits=True)
    return owned_footprints(
        tile,
        labels,
        confidence,
        valid,
        post,
        shard_level=shard_level,
    )


def owned_footprints(
    tile: grid.Tile,
    labels: np.ndarray,
    confidence: np.ndarray | None,
    valid: np.ndarray | None = None,
    post: PostprocessConfig = DEFAULT_POSTPROCESS,
    *,
    shard_level: int = 6,
) -> gpd.GeoDataFrame:
    """Polygonize an instance raster on a tile's grid and keep what the tile owns.

    Args:
        tile: the tile whose grid ``labels`` lies on.
        labels: int (H, W) instance ids, 0 = background.
        confidence: per-instance scores indexed by label id, or None (NaN confidence).
        valid: bool (H, W), False where there is no imagery; None means all valid.
        post: the confidence floor (NaN confidence is never dropped), simplification and
            minimum area.
        shard_level: S2 level of the shard key.

    Returns:
        A GeoDataFrame in EPSG:4326 with columns ``latitude, longitude, area_in_meters,
        confidence, geometry, shard``, in a canonical order (see :func:`canonical_order`).
    """
    labels = np.asarray(labels)
    if labels.shape != (tile.grid.height, tile.grid.width):
        raise ValueError(
            f"labels of shape {labels.shape} do not fit tile {tile.id}'s grid "
            f"({tile.grid.height}, {tile.grid.width})"
        )
    if valid is not None:
        labels = np.where(valid, labels, 0)
    labels = _ownable(tile, labels, post.simplify_m)
    frame = polygonize.polygonize(
        labels,
        tile.grid.transform,
        tile.grid.crs,
        confidence=confidence,
        simplify_m=post.simplify_m,
        min_area_m2=post.min_area_m2,
    )
    lon, lat = frame["longitude"].to_numpy(), frame["latitude"].to_numpy()
    keep = tile.owns(lon, lat)
    if post.threshold > 0:
        keep &= ~(frame["confidence"].to_numpy() < post.threshold)
    frame = frame[keep]
    return _with_shards(frame, shard_level)


def _ownable(tile: grid.Tile, labels: np.ndarray, simplify_m: float) -> np.ndarray:
    """``labels`` without the instances that lie wholly outside the core's pixel box.

    A polygon's centroid lies inside its bounding box, and the polygon (simplified, repaired)
    inside its instance's pixels' box, so such an instance can never be owned: polygonizing it
    was a fifth of a dense tile's polygons for nothing. The box is widened by two pixels and the
    simplification tolerance, so ownership itself is still decided by :meth:`grid.Tile.owns`.
    """
    if not labels.any():
        return labels
    row0, row1, col0, col1 = tile.core_window
    pad = 2 + simplify_m / tile.grid.pixel_size
    boxes = ndi.find_objects(labels)
    outside = [
        index + 1
        for index, box in enumerate(boxes)
        if box is not None
        and (
            box[0].stop < row0 - pad
            or box[0].start > row1 + pad
            or box[1].stop < col0 - pad
            or box[1].start > col1 + pad
        )
    ]
    if not outside:
        return labels
    keep = np.ones(len(boxes) + 1, dtype=bool)
    keep[outside] = False
    return np.where(keep[labels], labels, 0)


def inside_region(
    frame: gpd.GeoDataFrame, region: shapely.Geometry
) -> tuple[gpd.GeoDataFrame, int]:
    """Keep the footprints whose centroid lies in the region (on its edge counts as inside).

    The same rule as tile ownership, applied to the region: a building the user's region cuts is
    written when most of it (its centroid) is inside, and never twice.

    Args:
        frame: footprints with ``longitude`` and ``latitude`` (their centroid) columns.
        region: the region in lon/lat, ideally ``shapely.prepare``-d.

    Returns:
        The rows kept (index reset) and how many were dropped.
    """
    if frame.empty:
        return frame, 0
    keep = shapely.intersects_xy(
        region, frame["longitude"].to_numpy(), frame["latitude"].to_numpy()
    )
    return frame[keep].reset_index(drop=True), int((~keep).sum())


def _with_shards(frame: gpd.GeoDataFrame, shard_level: int) -> gpd.GeoDataFrame:
    out = gpd.GeoDataFrame(
        {c: frame[c].to_numpy(dtype=float) for c in _ORDER},
        geometry=gpd.GeoSeries(frame.geometry.to_numpy(), crs="EPSG:4326"),
    )
    tokens = cells.cell_tokens(out["longitude"].to_numpy(), out["latitude"].to_numpy(), shard_level)
    out[SHARD_COLUMN] = pd.array(tokens.astype(str), dtype=object)
    return canonical_order(out[FRAME_COLUMNS])


def empty_footprints() -> gpd.GeoDataFrame:
    """Return a footprint frame with no rows and the columns :func:`owned_footprints` gives."""
    return _with_shards(
        gpd.GeoDataFrame(
            {c: np.empty(0) for c in _ORDER}, geometry=gpd.GeoSeries([], crs="EPSG:4326")
        ),
        0,
    )


def canonical_order(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Put footprints in a total order that depends only on their values.

    Sorting by centroid, area and confidence, then by the geometry's WKB, makes the order the same
    whatever order tiles arrived in (GroupByKey gives no order), so the written files are too.

    Args:
        frame: footprints with the ``latitude, longitude, area_in_meters, confidence`` columns.

    Returns:
        The rows, reordered, with a fresh RangeIndex.
    """
    if len(frame) < 2:
        return frame.reset_index(drop=True)
    keys = [frame[c].to_numpy() for c in reversed(_ORDER)]
    wkb = shapely.to_wkb(frame.geometry.to_numpy(), hex=True)
    order = np.lexsort([wkb, *keys])
    return frame.iloc[order].reset_index(drop=True)


def split_by_shard(frame: gpd.GeoDataFrame) -> Iterator[tuple[str, gpd.GeoDataFrame]]:
    """Yield ``(shard token, rows)`` for each shard present in ``frame``, in token order.

    Args:
        frame: footprints from :func:`owned_footprints`.
    """
    if frame.empty:
        return
    for token, rows in frame.groupby(SHARD_COLUMN, sort=True):
        yield str(token), rows.reset_index(drop=True)
