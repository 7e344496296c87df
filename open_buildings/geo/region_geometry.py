"""The geometry of a region's polygons: antimeridian split, repair, overlapping members, area.

Import from :mod:`open_buildings.geo.regions`; these are its geometric steps, after the GeoJSON
has been checked.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import antimeridian
import numpy as np
import shapely
from pyproj import Transformer

from open_buildings.geo.geojson import region_error

__all__ = ["Pending", "check_members", "fix_all", "fix_polygon", "geodesic_area_km2", "union"]

_EQUAL_AREA = Transformer.from_crs(
    "EPSG:4326", "+proj=cea +ellps=WGS84 +lat_ts=0 +units=m", always_xy=True
).transform
# Edges are straight in lon/lat (RFC 7946); the area is taken after densifying to this.
_DENSIFY_DEG = 0.1


@dataclass(frozen=True)
class Pending:
    """One polygon's checked rings, before it is made valid.

    Attributes:
        rings: the exterior, then the holes, each an ``(n, 2)`` lon/lat array, closed.
        where: names the polygon in messages.
        group: the geometry object it belongs to (its members are checked together).
        multi: it is a member of a MultiPolygon.
    """

    rings: list[np.ndarray]
    where: str
    group: str
    multi: bool


def fix_all(pending: list[Pending], source: str, fix_invalid: bool) -> list[shapely.Polygon]:
    """Make every polygon valid and within +-180, then check each MultiPolygon's members.

    The common case (valid, not crossing the antimeridian) is decided for all polygons at once
    with vectorised shapely and numpy; only the others go through :func:`fix_polygon` one by
    one. Raises as :func:`fix_polygon` and :func:`check_members` do.
    """
    if not pending:
        return []
    rings = [ring for p in pending for ring in p.rings]
    lengths = np.array([len(r) for r in rings])
    counts = np.array([len(p.rings) for p in pending])
    coords = np.concatenate(rings)
    ring_offsets = np.concatenate([[0], np.cumsum(lengths)])
    polygon_offsets = np.concatenate([[0], np.cumsum(counts)])
    polygons = shapely.from_ragged_array(
        shapely.GeometryType.POLYGON, coords, (ring_offsets, polygon_offsets)
    )
    # A ring crosses the antimeridian where |lon| > 180 or consecutive longitudes jump by more
    # than 180 degrees (a jump of exactly 360 joins -180 to 180 and is not a crossing).
    lon = coords[:, 0]
    jump = np.abs(np.diff(lon, append=lon[-1]))
    jump[ring_offsets[1:] - 1] = 0.0  # no jump from a ring's last position to the next ring
    odd = (np.abs(lon) > 180) | ((jump > 180) & (jump != 360))
    ring_odd = np.add.reduceat(odd, ring_offsets[:-1]) > 0
    crossing = np.add.reduceat(ring_odd, polygon_offsets[:-1]) > 0
    simple = ~crossing & shapely.is_valid(polygons)
    groups: dict[tuple[str, bool], list[shapely.Polygon]] = {}
    for i, p in enumerate(pending):
        if simple[i]:
            parts = [polygons[i]]
        else:
            parts = fix_polygon(polygons[i], p.where, source, fix_invalid, crosses=crossing[i])
        groups.setdefault((p.group, p.multi), []).extend(parts)
    out: list[shapely.Polygon] = []
    for (group, multi), parts in groups.items():
        out.extend(
            check_members(parts, group, source, fix_invalid) if multi and len(parts) > 1 else parts
        )
    return out


def check_members(
    out: list[shapely.Polygon], label: str, source: str, fix_invalid: bool
) -> list[shapely.Polygon]:
    """Refuse (or, with ``fix_invalid``, union) a MultiPolygon whose valid members overlap.

    Args:
        out: the members, each valid and within +-180.
        label: names the feature in messages.
        source: names the file in messages.
        fix_invalid: merge overlapping members into their union, with a warning.

    Returns:
        The members, or the polygons of their union.

    Raises:
        RegionError: if members overlap, repeat or nest and ``fix_invalid`` is False.
    """
    # Valid members can still overlap, repeat or nest, which the union would merge silently:
    # the whole is checked, as a Polygon is. Members that only share an edge are fine.
    merged = shapely.union_all(out)
    total = float(shapely.area(out).sum())
    if total - merged.area > 1e-9 * total:
        reason = shapely.is_valid_reason(shapely.MultiPolygon(out))
        if not fix_invalid:
            raise region_error(
                source,
                label,
                f"the MultiPolygon is invalid ({reason}): its polygons overlap, repeat or "
                "nest inside each other. Give each area once, or merge them into their "
                "union: --fix-invalid on the command line, fix_invalid=True in Python",
            )
        warnings.warn(
            f"{source}: {label}: the MultiPolygon's polygons overlap, repeat or nest "
            f"({reason}); merged them into their union",
            UserWarning,
            stacklevel=2,
        )
        return _polygonal(merged)
    return out


def _polygonal(geometry: shapely.Geometry) -> list[shapely.Polygon]:
    parts = shapely.get_parts(shapely.get_parts(geometry))
    return list(parts[shapely.get_type_id(parts) == 3])


def _repair(
    polygon: shapely.Geometry, reason: str, label: str, source: str, fix_invalid: bool
) -> list[shapely.Polygon]:
    if not fix_invalid:
        raise region_error(
            source,
            label,
            f"the polygon is invalid ({reason}); fix the ring so that it does not "
            "cross itself, or repair it with shapely.make_valid: --fix-invalid on the command "
            "line, fix_invalid=True in Python",
        )
    parts = _polygonal(shapely.make_valid(polygon))
    if not parts:
        raise region_error(
            source,
            label,
            f"the polygon is invalid ({reason}) and has no area left after repair; redraw it",
        )
    warnings.warn(
        f"{source}: {label}: repaired an invalid polygon ({reason}) with shapely.make_valid; "
        f"kept {len(parts)} polygon part(s), dropped any lines or points",
        UserWarning,
        stacklevel=2,
    )
    return parts


def fix_polygon(
    polygon: shapely.Polygon, label: str, source: str, fix_invalid: bool, *, crosses: bool
) -> list[shapely.Polygon]:
    """Make one polygon valid, split at the antimeridian, oriented; return its parts.

    Args:
        polygon: the polygon as written, longitudes up to +-360.
        label: names the polygon in messages.
        source: names the file in messages.
        fix_invalid: repair an invalid polygon (with a warning) instead of raising.
        crosses: it crosses the antimeridian (as :func:`fix_all` decides).
    """
    if not crosses:
        if not polygon.is_valid:
            return _repair(polygon, shapely.is_valid_reason(polygon), label, source, fix_invalid)
        return [polygon]
    if np.abs(shapely.get_coordinates(polygon)[:, 0]).max() <= 180:
        # Only a jump of more than 180 degrees says "across the antimeridian"; read literally
        # (RFC 7946: straight edges in lon/lat), the same ring goes the long way round.
        warnings.warn(
            f"{source}: {label}: a ring jumps more than 180 degrees of longitude between two "
            "positions, so it is read as crossing the antimeridian (the short way). If you "
            "meant the long way round (a box nearly as wide as the world), split it at 0 "
            "degrees into two polygons; to cross the antimeridian without this warning, write "
            "the longitudes continuously (e.g. 179.5 to 180.5)",
            UserWarning,
            stacklevel=2,
        )
    # Try the plain split first, then closing the ring over either pole (as the antimeridian
    # package's docs advise for rings with few points near a pole).
    fixed = None
    for pole in ({}, {"force_north_pole": True}, {"force_south_pole": True}):
        try:
            candidate = antimeridian.fix_polygon(
                polygon, fix_winding=True, great_circle=False, **pole
            )
        except Exception:  # noqa: BLE001 - any failure of the library means "cannot split"
            continue
        if candidate.is_valid:
            return _polygonal(candidate)
        if fixed is None:
            fixed = candidate
    if fixed is None:
        raise region_error(
            source,
            label,
            "the polygon crosses the antimeridian but cannot be split into valid "
            "parts; check that its rings do not cross themselves",
        )
    reason = f"after splitting at the antimeridian: {shapely.is_valid_reason(fixed)}"
    return _repair(fixed, reason, label, source, fix_invalid)


def geodesic_area_km2(geometry: shapely.Geometry) -> float:
    """Area on the WGS84 ellipsoid of a lon/lat geometry whose edges are straight in lon/lat.

    Densified, then measured in the cylindrical equal-area projection (exact on the ellipsoid),
    where longitude is linear: a box as wide as the world, or reaching a pole, keeps its area
    (geodesic ring formulas read its -180 and 180 edges as one line, and a world box as 0 km2).
    """
    dense = shapely.segmentize(geometry, _DENSIFY_DEG)
    projected = shapely.transform(dense, _EQUAL_AREA, interleaved=False)
    return float(shapely.area(projected)) / 1e6


def union(polygons: list[shapely.Polygon]) -> shapely.Geometry:
    """Union valid polygons: only those that touch or overlap are merged, with one another.

    GEOS's unary union of 100,000 building-sized squares takes tens of seconds, though most of
    them touch nothing; the touching groups are found with an STRtree (one vectorised query) and
    their connected components, and only groups of two or more are unioned.

    Returns:
        A valid (Multi)Polygon covering the same area as ``shapely.union_all(polygons)``.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    parts = np.asarray(polygons, dtype=object)
    if len(parts) < 3:
        return shapely.union_all(parts)
    left, right = shapely.STRtree(parts).query(parts, predicate="intersects")
    pairs = left < right
    graph = coo_matrix(
        (np.ones(pairs.sum(), dtype=np.int8), (left[pairs], right[pairs])),
        shape=(len(parts), len(parts)),
    )
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    merged = list(parts[sizes[labels] == 1])
    for label in np.flatnonzero(sizes > 1):
        merged.extend(shapely.get_parts(shapely.union_all(parts[labels == label])))
    return merged[0] if len(merged) == 1 else shapely.MultiPolygon(merged)
