"""A region applied to footprints in the evaluation: cut at its edge, or kept by centroid
(``ob-infer``'s rule), and the region reprojected into the footprints' CRS."""

from __future__ import annotations

from dataclasses import replace

import geopandas as gpd
import shapely
from pyproj import CRS

from open_buildings.errors import EvaluationError
from open_buildings.evaluation.io import Footprints, polygonal


def clip(fp: Footprints, region: shapely.Geometry) -> Footprints:
    """Clip footprints to a region (in the same CRS), dropping those left with no area.

    Polygons that cross the region's edge are cut at it, on both sides alike, so a building cut
    in the truth is compared with the prediction cut the same way.

    Args:
        fp: The footprints.
        region: The region polygon, in ``fp.crs``.

    Returns:
        The footprints inside the region.
    """
    if len(fp) == 0:
        return fp
    shapely.prepare(region)
    hit = shapely.intersects(region, fp.geometry)
    inside = shapely.contains_properly(region, fp.geometry)
    geoms = fp.geometry.copy()
    cut = hit & ~inside
    if cut.any():
        geoms[cut] = [polygonal(g) for g in shapely.intersection(geoms[cut], region)]
    out = replace(fp, geometry=geoms)
    keep = hit & (shapely.area(geoms) > 0)
    return out.take(keep)


def centroid_in(fp: Footprints, region: shapely.Geometry) -> Footprints:
    """Keep the footprints whose centroid lies in a region (same CRS; its edge counts as inside).

    This is ``ob-infer``'s rule for what a region's output holds: scoring its output against
    truth cut at the region's edge would count, as missed, the slivers of buildings whose
    centroid lies outside (which ob-infer leaves to the neighbouring region by design).
    """
    if len(fp) == 0:
        return fp
    points = shapely.centroid(fp.geometry)
    shapely.prepare(region)
    return fp.take(shapely.intersects_xy(region, shapely.get_x(points), shapely.get_y(points)))


def region_in(region_lonlat: shapely.Geometry, crs: CRS | None) -> shapely.Geometry:
    """Reproject a lon/lat region into ``crs``.

    Args:
        region_lonlat: The region, EPSG:4326.
        crs: Target CRS.

    Returns:
        The region in ``crs``.

    Raises:
        EvaluationError: If ``crs`` is None (pixel coordinates cannot be clipped to a region).
    """
    if crs is None:
        raise EvaluationError(
            "--region needs georeferenced inputs; these are in pixel coordinates (SpaceNet "
            "PolygonWKT_Pix)"
        )
    return gpd.GeoSeries([region_lonlat], crs=4326).to_crs(crs).iloc[0]
