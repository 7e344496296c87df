"""Read and validate a region: the area, given as GeoJSON, in which to find buildings.

A region file is a FeatureCollection, a Feature, or a bare Polygon/MultiPolygon (a
GeometryCollection of polygons is accepted too). All its polygons are unioned into one
:class:`Region`. Everything in the file is treated as hostile: the size is checked before reading,
the nesting depth is capped (for a file, measured on the raw text before the recursive ``json``
parser sees it; its ``RecursionError`` is caught as well), and every problem raises a
:class:`~open_buildings.errors.RegionError` that names the feature (``"feature 3: ..."``) and says
how to fix it.

Rules (RFC 7946 unless noted):

- Coordinates are WGS84 ``[lon, lat]`` (an optional third number, the height, is dropped). A legacy
  ``crs`` member is accepted only if it names CRS84 or EPSG:4326 (read as lon/lat, as GeoJSON
  tools always have). Latitudes must lie in [-90, 90]; beyond that the message says whether the
  file looks like ``[lat, lon]``. Longitudes may run up to +-360 so that a ring may be written
  continuously across the antimeridian (170 .. 190); further out is an error.
- Type names are case-sensitive (``"featurecollection"`` is an error naming ``FeatureCollection``).
  ``bbox`` must be 4 or 6 numbers. RFC 7946 section 7.1 is enforced: a Feature must not have
  ``coordinates``/``geometries``/``features``, a geometry must not have
  ``geometry``/``properties``/``features``, and so on.
- A region is an area: a Point, LineString, null or empty geometry is an error when the input
  holds no polygon at all (the index is named: remove it or buffer it into a polygon). In a
  FeatureCollection that does hold polygons, such features are skipped with a warning that names
  each one, so a map export with a few labels or roads in it still loads (geojsonhint's "good"
  ``good-featurecollection.geojson``), and the user is told exactly what was left out.
- Rings must be closed (first position identical to the last, height included) and hold at least
  4 positions. Polygons must be valid (no self-intersection), and a MultiPolygon's members must
  not overlap, repeat or nest (sharing an edge is fine: they are unioned). ``fix_invalid=True``
  repairs a polygon with ``shapely.make_valid`` (keeping the polygonal part) and a MultiPolygon
  by the union of its members, and warns.
- A polygon that crosses the antimeridian (a jump of more than 180 degrees between consecutive
  longitudes, or a longitude beyond +-180) is split with the ``antimeridian`` package, reading
  edges as straight lines in lon/lat as RFC 7946 does; rings around a pole are closed over it.

Documented repairs (not errors):

- Ring orientation is normalised: exteriors counter-clockwise, holes clockwise. RFC 7946 says
  parsers should not reject clockwise rings, so ``polygon_winding_order.geojson`` and
  ``bad-polygon-interiorring-rhr.geojson`` (geojsonhint's "bad" set) load.
- A UTF-8 byte-order mark is skipped (RFC 8259 lets parsers ignore it).
- A Feature without a ``properties`` member is accepted; a ``properties`` that is not an object
  or null is an error.

Decisions that reject what other readers might accept:

- A duplicate key in any JSON object is an error (``bad-duplicate-properties.geojson`` has two
  ``type`` members): which one wins differs between parsers, so the region would be ambiguous.
- ``NaN``/``Infinity`` literals parse, but as coordinates they are errors naming the feature.
- geojsonhint's "good" ``issue82.geojson`` has latitudes near -140: valid JSON structure, but not
  WGS84 degrees, so it is rejected (the message suggests a projected CRS).
- A polygon that still self-intersects after the antimeridian split (a satellite swath that
  overlaps itself near a pole, as antimeridian's ``overlap.json``) is an error unless
  ``fix_invalid=True``.
"""

from __future__ import annotations

import json
import os
import stat
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely

from open_buildings.errors import RegionError
from open_buildings.geo.geojson import (
    ARRAY,
    GEOMETRY_TYPES,
    NOT_AREA,
    NotAreaError,
    check_object,
    geometries,
    is_finite_number,
    is_number,
    json_depth,
    load_json,
    region_error,
    too_big,
    too_deep,
)
from open_buildings.geo.region_geometry import Pending, fix_all, geodesic_area_km2, union

__all__ = ["Region", "parse_region", "read_region", "region_from_bbox"]


@dataclass(frozen=True)
class Region:
    """A validated region in lon/lat.

    Attributes:
        geometry: EPSG:4326 lon/lat, valid, every part within +-180/+-90, exteriors
            counter-clockwise. A region crossing the antimeridian has a part on each side.
        source: The file it was read from, or ``"<dict>"``.
        area_km2: Geodesic area on the WGS84 ellipsoid, edges read as straight in lon/lat.
    """

    geometry: shapely.MultiPolygon | shapely.Polygon
    source: str
    area_km2: float

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(west, south, east, north); (-180, ..., 180, ...) for a region split at 180."""
        west, south, east, north = self.geometry.bounds
        return (float(west), float(south), float(east), float(north))

    @property
    def parts(self) -> list[shapely.Polygon]:
        """The polygons of the region, each within +-180 longitude."""
        return list(shapely.get_parts(self.geometry))


def read_region(
    path: str | os.PathLike,
    *,
    max_area_km2: float = 1_000_000,
    fix_invalid: bool = False,
    max_bytes: int = 50_000_000,
    max_depth: int = 64,
) -> Region:
    """Read a region from a GeoJSON file.

    Args:
        path: A GeoJSON file (FeatureCollection, Feature, or Polygon/MultiPolygon).
        max_area_km2: Largest geodesic area accepted, in km2.
        fix_invalid: Repair invalid polygons with ``shapely.make_valid`` (with a warning)
            instead of raising.
        max_bytes: Largest file size accepted; checked before reading.
        max_depth: Deepest JSON nesting accepted.

    Returns:
        The region, its polygons unioned.

    Raises:
        RegionError: The file is missing, too big, not UTF-8 JSON, not valid GeoJSON, not an
            area, invalid, or larger than ``max_area_km2``.
    """
    source = os.fspath(path)
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block the read forever
            raise RegionError(
                f"{source}: not a regular file (a directory, pipe or device); save the region "
                "to a GeoJSON file and pass its path"
            )
        size = info.st_size
        if size > max_bytes:
            raise too_big(source, size, max_bytes)
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)  # bounded even if the size lied (pipes, /dev files)
    except OSError as e:
        raise RegionError(
            f"{source}: cannot read the region file ({e.strerror}); check the path"
        ) from e
    if len(data) > max_bytes:
        raise too_big(source, len(data), max_bytes)
    obj = load_json(data, source, max_depth)
    return _build(obj, source, max_area_km2, fix_invalid)


def parse_region(
    obj: Any,
    *,
    source: str = "<dict>",
    max_area_km2: float = 1_000_000,
    fix_invalid: bool = False,
    max_depth: int = 64,
) -> Region:
    """Validate parsed GeoJSON (as from ``json.load``) and build a region from it.

    Args:
        obj: The parsed GeoJSON object.
        source: Names the input in error messages and in ``Region.source``.
        max_area_km2: Largest geodesic area accepted, in km2.
        fix_invalid: Repair invalid polygons with ``shapely.make_valid`` (with a warning).
        max_depth: Deepest nesting accepted.

    Returns:
        The region, its polygons unioned.

    Raises:
        RegionError: The object is not valid GeoJSON, not an area, invalid, or too large.
    """
    if json_depth(obj, max_depth) > max_depth:
        raise too_deep(source, max_depth)
    return _build(obj, source, max_area_km2, fix_invalid)


def _build(obj: Any, source: str, max_area_km2: float, fix_invalid: bool) -> Region:
    pending: list[Pending] = []
    skipped: list[NotAreaError] = []
    for label, geometry in geometries(obj, source):
        try:
            pending.extend(_polygons(geometry, label, source))
        except NotAreaError as exc:
            skipped.append(exc)
    polygons = fix_all(pending, source, fix_invalid)
    if skipped and not polygons:
        raise skipped[0]
    if skipped:
        warnings.warn(
            f"{source}: skipped {len(skipped)} feature(s) that are not areas: "
            + "; ".join(exc.label for exc in skipped[:10])
            + (" ..." if len(skipped) > 10 else ""),
            stacklevel=3,
        )
    geometry = shapely.orient_polygons(union(polygons))
    return _region(geometry, source, max_area_km2)


def region_from_bbox(
    west: float, south: float, east: float, north: float, *, max_area_km2: float = 1_000_000
) -> Region:
    """Build a region from a bounding box in degrees.

    Args:
        west: Western longitude in [-180, 180].
        south: Southern latitude in [-90, 90].
        east: Eastern longitude in [-180, 180]; ``west > east`` crosses the antimeridian.
        north: Northern latitude in [-90, 90], greater than ``south``.
        max_area_km2: Largest geodesic area accepted, in km2.

    Returns:
        The region: one box, or two when it crosses the antimeridian.

    Raises:
        RegionError: A value is not finite or out of range, the box is empty, or too large.
    """
    source = f"bbox({west}, {south}, {east}, {north})"
    values = (west, south, east, north)
    if not all(is_finite_number(v) for v in values):
        raise RegionError(f"{source}: every bound must be a finite number")
    if not (-180 <= west <= 180 and -180 <= east <= 180):
        raise RegionError(f"{source}: west and east must lie in [-180, 180]")
    if not (-90 <= south < north <= 90):
        raise RegionError(f"{source}: need -90 <= south < north <= 90; are lat and lon swapped?")
    if west == east:
        raise RegionError(f"{source}: west equals east, so the box has no width")
    if west < east:
        boxes = [shapely.box(west, south, east, north)]
    else:
        boxes = [shapely.box(west, south, 180, north), shapely.box(-180, south, east, north)]
    geometry = shapely.orient_polygons(shapely.union_all(boxes))
    return _region(geometry, source, max_area_km2)


def _polygons(geometry: Any, label: str, source: str) -> list[Pending]:
    """Check one geometry object's structure and rings; return its polygons, to be made valid."""
    if geometry is None:
        raise NotAreaError(source, label, f"the geometry is null; {NOT_AREA}")
    kind = check_object(geometry, label, source)
    if kind == "GeometryCollection":
        members = geometry.get("geometries")
        if not isinstance(members, ARRAY):
            raise region_error(source, label, 'a GeometryCollection needs a "geometries" array')
        if not members:
            raise NotAreaError(source, label, f"the GeometryCollection is empty; {NOT_AREA}")
        return [
            poly
            for j, member in enumerate(members)
            for poly in _polygons(member, f"{label}, geometries[{j}]", source)
        ]
    if kind not in GEOMETRY_TYPES:
        raise region_error(source, label, f"expected a geometry, got a {kind}")
    if kind not in ("Polygon", "MultiPolygon"):
        raise NotAreaError(source, label, f"a {kind} is not an area; {NOT_AREA}")
    coords = geometry.get("coordinates")
    if not isinstance(coords, ARRAY):
        raise region_error(source, label, f'a {kind} needs a "coordinates" array')
    if not coords:
        raise NotAreaError(source, label, f"the {kind} is empty; {NOT_AREA}")
    polys = [coords] if kind == "Polygon" else coords
    out = []
    for j, rings in enumerate(polys):
        where = label if kind == "Polygon" else f"{label}, polygon {j}"
        if not isinstance(rings, ARRAY) or not rings:
            raise region_error(source, where, "a polygon must be a non-empty array of rings")
        arrays = [_ring(ring, f"{where}, ring {k}", source) for k, ring in enumerate(rings)]
        out.append(Pending(arrays, where, label, kind == "MultiPolygon"))
    return out


def _ring(ring: Any, label: str, source: str) -> np.ndarray:
    """Validate one linear ring; return its (n, 2) lon/lat array."""
    if not isinstance(ring, ARRAY) or (ring and all(is_number(v) for v in ring)):
        raise region_error(
            source,
            label,
            f"a ring must be an array of [lon, lat] positions, got "
            f"{json.dumps(ring)[:40]}; Polygon coordinates nest as [[[lon, lat], ...]]",
        )
    position_types = {type(p) for p in ring}
    fast = position_types <= {list, tuple}
    lengths = {len(p) for p in ring} if fast else set()
    fast = fast and lengths <= {2, 3} and {type(v) for p in ring for v in p} <= {int, float}
    for k, p in enumerate([] if fast else ring):
        if not (isinstance(p, ARRAY) and 2 <= len(p) <= 3 and all(is_number(v) for v in p)):
            raise region_error(
                source,
                label,
                f"position {k} is {json.dumps(p)[:60]}; a position is 2 or 3 "
                "numbers [lon, lat(, height)], not strings or booleans",
            )
    if len(ring) < 4:
        raise region_error(
            source,
            label,
            f"a ring needs at least 4 positions (a triangle plus the closing "
            f"position), got {len(ring)}",
        )
    try:
        xy = np.array(ring if len(lengths) == 1 else [p[:2] for p in ring], dtype=float)[:, :2]
    except OverflowError:
        raise region_error(source, label, "a coordinate is too large to be a degree") from None
    finite = np.isfinite(xy).all(axis=1)
    if not finite.all():
        raise region_error(
            source, label, f"position {np.argmin(finite)} is NaN or infinite; fix the coordinates"
        )
    if list(ring[0]) != list(ring[-1]):
        raise region_error(
            source,
            label,
            f"the ring is not closed: first position {list(ring[0])} differs from "
            f"the last {list(ring[-1])}; repeat the first position at the end",
        )
    lon, lat = xy[:, 0], xy[:, 1]
    if np.abs(lat).max() > 90:
        k = int(np.argmax(np.abs(lat) > 90))
        if abs(lon[k]) <= 90:
            hint = "coordinates look like [lat, lon]; GeoJSON is [lon, lat]: swap them"
        else:
            hint = "is the file in a projected CRS? GeoJSON is WGS84 [lon, lat] degrees"
        raise region_error(
            source,
            label,
            f"position {k} {list(ring[k])} has latitude {lat[k]:g}, outside [-90, 90]; {hint}",
        )
    if np.abs(lon).max() > 360:
        k = int(np.argmax(np.abs(lon) > 360))
        raise region_error(
            source,
            label,
            f"position {k} {list(ring[k])} has longitude {lon[k]:g}, outside "
            "[-180, 180] (up to +-360 is accepted only for rings drawn across the antimeridian)",
        )
    return xy


def _region(geometry: shapely.Geometry, source: str, max_area_km2: float) -> Region:
    if geometry.is_empty or geometry.geom_type not in ("Polygon", "MultiPolygon"):
        raise RegionError(f"{source}: the region has no area; {NOT_AREA}")
    area = geodesic_area_km2(geometry)
    if area > max_area_km2:
        raise RegionError(
            f"{source}: the region's area is {area:,.0f} km2, over the cap of "
            f"{max_area_km2:,.0f} km2; split it into smaller regions, or pass a larger "
            "max_area_km2 to raise the cap"
        )
    return Region(geometry=geometry, source=source, area_km2=area)
