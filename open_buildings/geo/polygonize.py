"""Instance masks -> valid building polygons in lon/lat, with their ground area in m².

The raster-to-vector step is GDAL's polygonizer (``rasterio.features.shapes``) with
4-connectivity; everything after it (affine to metres, simplification, validity, area, reprojection)
runs on whole shapely 2 arrays, never per vertex.

Rules worth knowing:

* **One polygon per instance.** With 4-connectivity, pixels of one instance that touch only at a
  corner come out as separate parts; 8-connectivity would instead join them into a ring that
  touches itself, which is not a valid polygon. An instance that falls apart this way keeps its
  *largest* 4-connected part (ties: the first GDAL yields). A building is one connected roof; a
  corner-only contact is a mask artefact, and joining the parts would need a MultiPolygon or a
  made-up bridge. The dropped parts are small by construction.
* **Holes stay holes** (a courtyard is not roof).
* **Simplification** is Douglas-Peucker with topology preserved, in metres. The default, 0.5 m
  (one pixel of the 50 cm grid), removes the pixel staircase along slanted walls: its vertices lie
  at most one pixel (times the cosine of the wall's angle) off the wall. A corner survives when it
  lies more than ``simplify_m`` off the chord that would replace it, so a 2 m wing of a building
  keeps its corners, while a one-pixel notch, or a 1 m notch in a 2 m building, is smoothed away:
  at the model's resolution those are noise. Instances are simplified independently, so two
  buildings that share an edge may end up with a sliver of gap or overlap of at most
  ``simplify_m``.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import rasterio.features
import shapely
from affine import Affine

OUTPUT_COLUMNS = [
    "instance_id",
    "latitude",
    "longitude",
    "area_in_meters",
    "confidence",
    "geometry",
]
DEFAULT_SIMPLIFY_M = 0.5
DEFAULT_MIN_AREA_M2 = 1.0
_INT32_MAX = np.iinfo(np.int32).max


def polygonize(
    labels: np.ndarray,
    transform: Affine,
    crs: str,
    *,
    confidence: np.ndarray | None = None,
    simplify_m: float = DEFAULT_SIMPLIFY_M,
    min_area_m2: float = DEFAULT_MIN_AREA_M2,
) -> gpd.GeoDataFrame:
    """Turn an instance-label raster into one valid polygon per instance, in lon/lat.

    ``area_in_meters`` is the true ground area: the polygon's area in ``crs`` divided by the
    projection's areal scale factor at the polygon's centroid (``pyproj.Proj.get_factors``). Over a
    building the scale factor is constant to ~1e-8, so this matches the geodesic area on the WGS84
    ellipsoid (``pyproj.Geod.geometry_area_perimeter``) to about 1e-6. ``latitude``/``longitude``
    are the centroid of the polygon in ``crs``, reprojected.

    Args:
        labels: 2-D integer array; 0 is background, 1..N are instances (ids need not be dense).
        transform: affine transform from pixel (col, row) to ``crs`` coordinates.
        crs: the raster's projected, metre-based CRS, e.g. ``"EPSG:32737"`` (a UTM zone).
        confidence: optional per-instance scores indexed by label id (``confidence[label]``), so
            its length must exceed the largest label. Without it the column is NaN.
        simplify_m: Douglas-Peucker tolerance in metres (topology preserved); 0 disables it.
        min_area_m2: instances whose ground area (after simplification) is below this are dropped.

    Returns:
        A GeoDataFrame in EPSG:4326 with columns ``instance_id, latitude, longitude,
        area_in_meters, confidence, geometry``, one row per kept instance, sorted by
        ``instance_id``. Exterior rings are counter-clockwise (RFC 7946).

    Raises:
        ValueError: if ``labels`` is not a 2-D non-negative integer array, ``crs`` is not a
            projected metric CRS, or ``confidence`` is too short.
    """
    proj_crs = _metric_crs(crs)
    if simplify_m < 0 or min_area_m2 < 0:
        raise ValueError(
            f"simplify_m and min_area_m2 must be >= 0, got {simplify_m} and {min_area_m2}"
        )
    ids, polygons = _polygons_metric(labels, transform, simplify_m=simplify_m)
    scores = _confidence_for(confidence, labels, ids)
    if ids.size == 0:
        return _frame(ids, np.empty(0), np.empty(0), np.empty(0), scores, polygons)

    to_lonlat = pyproj.Transformer.from_crs(proj_crs, "EPSG:4326", always_xy=True)
    centroids = shapely.get_coordinates(shapely.centroid(polygons))
    lon, lat = to_lonlat.transform(centroids[:, 0], centroids[:, 1])
    scale = pyproj.Proj(proj_crs).get_factors(lon, lat).areal_scale
    area = shapely.area(polygons) / np.asarray(scale, dtype=float)

    keep = area >= min_area_m2
    lonlat = shapely.transform(polygons[keep], lambda xy: _reproject(to_lonlat, xy))
    return _frame(
        ids[keep], np.asarray(lat)[keep], np.asarray(lon)[keep], area[keep], scores[keep], lonlat
    )


def _polygons_metric(
    labels: np.ndarray, transform: Affine, *, simplify_m: float = DEFAULT_SIMPLIFY_M
) -> tuple[np.ndarray, np.ndarray]:
    """Polygonize ``labels`` into one valid polygon per instance in the raster's own CRS.

    Returns:
        ``(ids, polygons)``: int64 instance ids (sorted ascending) and shapely Polygons in the
        coordinates ``transform`` maps to, oriented with counter-clockwise exterior rings.
    """
    labels = _check_labels(labels)
    ids: list[int] = []
    rings: list[list[np.ndarray]] = []
    if labels.any():
        for geojson, value in rasterio.features.shapes(labels, mask=labels != 0, connectivity=4):
            ids.append(int(value))
            rings.append([np.asarray(ring, dtype=float) for ring in geojson["coordinates"]])
    if not ids:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=object)

    id_arr = np.asarray(ids, dtype=np.int64)
    part_arr = _polygons_from_rings(rings)
    # Largest 4-connected part of each instance; lexsort is stable, so ties keep GDAL's order.
    order = np.lexsort((-shapely.area(part_arr), id_arr))
    first = np.ones(order.size, dtype=bool)
    first[1:] = id_arr[order][1:] != id_arr[order][:-1]
    id_arr, polygons = id_arr[order][first], part_arr[order][first]

    polygons = shapely.transform(polygons, lambda xy: _apply_affine(transform, xy))
    if simplify_m > 0:
        polygons = shapely.simplify(polygons, simplify_m, preserve_topology=True)
    polygons = _valid_polygons(polygons)
    nonempty = ~shapely.is_empty(polygons)
    return id_arr[nonempty], shapely.orient_polygons(polygons[nonempty], exterior_cw=False)


def _polygons_from_rings(rings: list[list[np.ndarray]]) -> np.ndarray:
    """Polygons from GDAL's rings (shell first), built as whole arrays.

    ``shapely.geometry.shape`` on each GeoJSON dict walks every vertex in Python, which was a
    third of polygonize; the same coordinates go through ``shapely.linearrings`` in one call here.
    """
    shells = [parts[0] for parts in rings]
    lengths = np.fromiter((len(shell) for shell in shells), dtype=np.int64, count=len(shells))
    shell_rings = shapely.linearrings(
        np.concatenate(shells), indices=np.repeat(np.arange(len(shells)), lengths)
    )
    polygons = shapely.polygons(shell_rings)
    for i, parts in enumerate(rings):
        if len(parts) > 1:  # holes (courtyards): rare, built one by one
            polygons[i] = shapely.Polygon(parts[0], parts[1:])
    return polygons


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D array, got shape {labels.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(f"labels must be an integer array of instance ids, got {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > _INT32_MAX):
        raise ValueError(
            f"label ids must lie in 0..{_INT32_MAX}, got {labels.min()}..{labels.max()}"
        )
    return labels.astype(np.int32, copy=False)


def _metric_crs(crs: str) -> pyproj.CRS:
    parsed = pyproj.CRS.from_user_input(crs)
    units = {axis.unit_name for axis in parsed.axis_info}
    if not parsed.is_projected or units != {"metre"}:
        raise ValueError(
            f"crs must be a projected CRS in metres (e.g. a UTM zone such as 'EPSG:32737'), "
            f"got {crs!r}; resample the labels onto a metric grid first"
        )
    return parsed


def _confidence_for(
    confidence: np.ndarray | None, labels: np.ndarray, ids: np.ndarray
) -> np.ndarray:
    if confidence is None:
        return np.full(ids.size, np.nan)
    scores = np.asarray(confidence, dtype=float)
    top = int(np.asarray(labels).max(initial=0))
    if scores.ndim != 1 or scores.size <= top:
        raise ValueError(
            f"confidence must be 1-D and indexed by label id, so longer than the largest label "
            f"({top}); got shape {scores.shape}"
        )
    return scores[ids]


def _apply_affine(transform: Affine, xy: np.ndarray) -> np.ndarray:
    a, b, c, d, e, f = transform[:6]
    x, y = xy[:, 0], xy[:, 1]
    return np.column_stack([a * x + b * y + c, d * x + e * y + f])


def _reproject(transformer: pyproj.Transformer, xy: np.ndarray) -> np.ndarray:
    x, y = transformer.transform(xy[:, 0], xy[:, 1])
    return np.column_stack([x, y])


def _valid_polygons(geoms: np.ndarray) -> np.ndarray:
    """Make each geometry a valid Polygon: repair, then keep the largest polygonal part."""
    bad = ~shapely.is_valid(geoms) | (shapely.get_type_id(geoms) != 3)
    if not bad.any():
        return geoms
    fixed = shapely.make_valid(geoms[bad])
    parts, index = shapely.get_parts(fixed, return_index=True)
    # make_valid may return a GeometryCollection holding lines; only polygons count as parts.
    is_polygon = shapely.get_type_id(parts) == 3
    parts, index = parts[is_polygon], index[is_polygon]
    order = np.lexsort((-shapely.area(parts), index))
    first = np.ones(order.size, dtype=bool)
    first[1:] = index[order][1:] != index[order][:-1]
    out = np.full(fixed.size, shapely.Polygon(), dtype=object)
    out[index[order][first]] = parts[order][first]
    result = geoms.copy()
    result[np.flatnonzero(bad)] = out
    return result


def _frame(
    ids: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    area: np.ndarray,
    confidence: np.ndarray,
    geometry: np.ndarray,
) -> gpd.GeoDataFrame:
    data = pd.DataFrame(
        {
            "instance_id": np.asarray(ids, dtype=np.int64),
            "latitude": np.asarray(lat, dtype=float),
            "longitude": np.asarray(lon, dtype=float),
            "area_in_meters": np.asarray(area, dtype=float),
            "confidence": np.asarray(confidence, dtype=float),
        }
    )
    return gpd.GeoDataFrame(data, geometry=gpd.GeoSeries(geometry, crs="EPSG:4326"))
