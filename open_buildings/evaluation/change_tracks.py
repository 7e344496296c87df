"""Buildings followed across dates: the zero-learning change baseline of ``ob-change``.

Each date's footprints (``ob-infer``'s output) are matched to the buildings already seen, with
the same one-to-one greedy IoU matching the metrics use (:func:`matching.greedy_match`, IoU >= 0.5
by default, footprints taken in order of confidence). A footprint matches the *latest* shape of
a building seen at any earlier date, so a building the model misses at one date is not split into
a "removed" and a "new" one. What a building's history can say depends on what the imagery saw:
``covered(lon, lat)[d, i]`` tells whether date ``d`` had imagery at building ``i``'s centroid.

- ``new``: first seen after a date whose imagery covered it (the place was seen empty);
- ``removed``: last seen before a date whose imagery covered it (the place was seen again,
  empty); a building that came and went is ``removed``, its ``first_seen`` says when it came;
- ``unchanged``: seen at every covering date from its first to the last, or only ever covered
  where it was seen.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence

import geopandas as gpd
import numpy as np
import shapely

from open_buildings.errors import EvaluationError
from open_buildings.evaluation.matching import greedy_match, polygon_ious
from open_buildings.geo.grid import utm_crs

__all__ = ["CHANGE_COLUMNS", "track_buildings"]

#: The columns ``ob-change`` adds to the v3 schema.
CHANGE_COLUMNS = ("change", "first_seen", "last_seen")

#: ``covered(lon, lat) -> bool (dates, points)``: whether each date's imagery covers the points.
Coverage = Callable[[np.ndarray, np.ndarray], np.ndarray]


def track_buildings(
    frames: Sequence[gpd.GeoDataFrame],
    dates: Sequence[datetime.date],
    covered: Coverage,
    *,
    iou: float = 0.5,
) -> gpd.GeoDataFrame:
    """Follow the buildings of each date's footprints through time.

    Args:
        frames: one GeoDataFrame of footprints per date (EPSG:4326, v3 columns), oldest first.
        dates: the dates, oldest first.
        covered: whether a date's imagery covers given points (see :data:`Coverage`).
        iou: the least IoU for two footprints of different dates to be one building.

    Returns:
        One row per building: its most recent footprint (shape, centroid, area and confidence
        of the last date it was seen), ``change`` and ``first_seen``/``last_seen`` (ISO dates).

    Raises:
        EvaluationError: fewer than two dates, or frames and dates of different lengths.
    """
    if len(frames) != len(dates) or len(dates) < 2:
        raise EvaluationError(
            f"change needs footprints of at least two dates, one frame per date; got "
            f"{len(frames)} frames for {len(dates)} dates"
        )
    frames = [f.to_crs("EPSG:4326") if f.crs is not None else f for f in frames]
    geoms = np.concatenate([f.geometry.to_numpy() for f in frames])
    if not len(geoms):
        return _rows(frames, [], np.zeros((len(dates), 0), dtype=bool), dates)
    lon, lat = shapely.get_coordinates(shapely.centroid(geoms)).mean(axis=0)
    metric = gpd.GeoSeries(geoms, crs="EPSG:4326").to_crs(utm_crs(float(lon), float(lat)))
    metric = metric.to_numpy()
    offsets = np.cumsum([0, *[len(f) for f in frames]])
    tracks: list[list[tuple[int, int]]] = []  # per building: (date, row) in date order
    for d, frame in enumerate(frames):
        unmatched = np.arange(len(frame))
        if tracks and len(frame):
            latest = np.array([metric[offsets[t[-1][0]] + t[-1][1]] for t in tracks])
            pairs = polygon_ious(metric[offsets[d] : offsets[d + 1]], latest)
            scores = frame["confidence"].to_numpy(dtype=float)
            match = greedy_match(scores, len(tracks), pairs, [iou])
            matched = match.truth[0] >= 0
            for row, track in zip(match.order[matched], match.truth[0][matched]):
                tracks[track].append((d, int(row)))
            unmatched = np.setdiff1d(unmatched, match.order[matched])
        tracks.extend([[(d, int(r))] for r in unmatched])
    last = np.array([offsets[t[-1][0]] + t[-1][1] for t in tracks])
    centre = shapely.get_coordinates(shapely.centroid(geoms[last]))
    return _rows(frames, tracks, covered(centre[:, 0], centre[:, 1]), dates)


def _rows(
    frames: Sequence[gpd.GeoDataFrame],
    tracks: list[list[tuple[int, int]]],
    cover: np.ndarray,
    dates: Sequence[datetime.date],
) -> gpd.GeoDataFrame:
    columns = ["latitude", "longitude", "area_in_meters", "confidence"]
    picked = [frames[t[-1][0]].iloc[t[-1][1]] for t in tracks]
    out = gpd.GeoDataFrame(
        {c: np.array([p[c] for p in picked], dtype=float) for c in columns},
        geometry=gpd.GeoSeries([p.geometry for p in picked], crs="EPSG:4326"),
    )
    change, first, last = [], [], []
    for i, track in enumerate(tracks):
        seen = [d for d, _ in track]
        covering = np.flatnonzero(cover[:, i])
        removed = bool(covering.size) and seen[-1] < covering.max()
        new = bool(covering.size) and seen[0] > covering.min()
        change.append("removed" if removed else "new" if new else "unchanged")
        first.append(dates[seen[0]].isoformat())
        last.append(dates[seen[-1]].isoformat())
    out["change"] = np.array(change, dtype=object)
    out["first_seen"] = np.array(first, dtype=object)
    out["last_seen"] = np.array(last, dtype=object)
    return out
