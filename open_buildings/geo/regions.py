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
  4 positions. Polygons must be valid (no self-intersection); ``fix_invalid=True`` repairs them
  with ``shapely.make_valid``, keeps the polygonal part and warns.
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

import difflib
import json
import math
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import antimeridian
import numpy as np
import shapely
from pyproj import Geod

from open_buildings.errors import RegionError

__all__ = ["Region", "parse_region", "read_region", "region_from_bbox"]

_GEOD = Geod(ellps="WGS84")
# Edges are straight in lon/lat (RFC 7946); the geodesic area is taken after densifying to this.
_DENSIFY_DEG = 0.1
_GEOMETRY_TYPES = (
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
    "GeometryCollection",
)
_TYPES = (*_GEOMETRY_TYPES, "Feature", "FeatureCollection")
# RFC 7946 section 7.1: members that would change an object's meaning.
_FORBIDDEN = {
    "FeatureCollection": ("coordinates", "geometries", "geometry", "properties"),
    "Feature": ("coordinates", "geometries", "features"),
    **{t: ("geometry", "properties", "features") for t in _GEOMETRY_TYPES},
}
_WGS84_NAMES = {
    "urn:ogc:def:crs:ogc:1.3:crs84",
    "urn:ogc:def:crs:ogc::crs84",
    "urn:ogc:def:crs:epsg::4326",
    "urn:ogc:def:crs:epsg:6.6:4326",
    "epsg:4326",
    "crs84",
    "ogc:crs84",
    "http://www.opengis.net/def/crs/ogc/1.3/crs84",
    "http://www.opengis.net/def/crs/epsg/0/4326",
}
_ARRAY = (list, tuple)  # JSON arrays; tuples too, as from __geo_interface__
_NOT_AREA = "a region must be a Polygon or MultiPolygon: remove it or buffer it into a polygon"


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
        size = os.stat(path).st_size
        if size > max_bytes:
            raise _too_big(source, size, max_bytes)
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)  # bounded even if the size lied (pipes, /dev files)
    except OSError as e:
        raise RegionError(
            f"{source}: cannot read the region file ({e.strerror}); check the path"
        ) from e
    if len(data) > max_bytes:
        raise _too_big(source, len(data), max_bytes)
    obj = _load_json(data, source, max_depth)
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
    if _depth(obj, max_depth) > max_depth:
        raise _too_deep(source, max_depth)
    return _build(obj, source, max_area_km2, fix_invalid)


def _build(obj: Any, source: str, max_area_km2: float, fix_invalid: bool) -> Region:
    polygons: list[shapely.Polygon] = []
    skipped: list[_NotAreaError] = []
    for label, geometry in _geometries(obj, source):
        try:
            polygons.extend(_polygons(geometry, label, source, fix_invalid))
        except _NotAreaError as exc:
            skipped.append(exc)
    if skipped and not polygons:
        raise skipped[0]
    if skipped:
        warnings.warn(
            f"{source}: skipped {len(skipped)} feature(s) that are not areas: "
            + "; ".join(exc.label for exc in skipped[:10])
            + (" ..." if len(skipped) > 10 else ""),
            stacklevel=3,
        )
    geometry = shapely.orient_polygons(shapely.union_all(polygons))
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
    if not all(_is_finite_number(v) for v in values):
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


# -- JSON ------------------------------------------------------------------------------------------


class _DuplicateKeyError(ValueError):
    pass


def _too_big(source: str, size: int, max_bytes: int) -> RegionError:
    return RegionError(
        f"{source}: the file is {size:,} bytes, over the cap of {max_bytes:,}; simplify the "
        "region (e.g. `ogr2ogr -simplify 0.0001`), or raise max_bytes"
    )


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        keys = [k for k, _ in pairs]
        raise _DuplicateKeyError(next(k for k in keys if keys.count(k) > 1))
    return obj


def _too_deep(source: str, max_depth: int) -> RegionError:
    return RegionError(
        f"{source}: the JSON is nested more than {max_depth} levels deep; a GeoJSON region "
        "needs about 8. Flatten it, or raise max_depth if the nesting is intended"
    )


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET_STEP = np.zeros(256, dtype=np.int8)
_BRACKET_STEP[[ord("["), ord("{")]] = 1
_BRACKET_STEP[[ord("]"), ord("}")]] = -1


def _text_depth(data: bytes) -> int:
    """The bracket nesting depth of JSON text, strings ignored; vectorised, no recursion."""
    steps = _BRACKET_STEP[np.frombuffer(_JSON_STRING.sub(b'""', data), dtype=np.uint8)]
    return int(np.cumsum(steps[steps != 0], dtype=np.int64).max(initial=0))


def _load_json(data: bytes, source: str, max_depth: int) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - data.rfind(b"\n", 0, e.start)
        raise RegionError(
            f"{source}: not UTF-8 (byte 0x{data[e.start]:02x} at line {line}, column {col}); "
            "GeoJSON must be UTF-8: re-save the file as UTF-8"
        ) from None
    if _text_depth(data) > max_depth:
        raise _too_deep(source, max_depth)
    try:
        return json.loads(text.removeprefix("\ufeff"), object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise RegionError(
            f"{source}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}; fix the "
            "syntax there (`python -m json.tool FILE` shows it too)"
        ) from None
    except _DuplicateKeyError as e:
        raise RegionError(
            f'{source}: duplicate key "{e}" in one JSON object; readers disagree on which value '
            "wins, so keep only one"
        ) from None
    except ValueError as e:  # e.g. an integer literal of more than 4300 digits
        raise RegionError(f"{source}: unreadable JSON number ({e}); use plain decimals") from None
    except RecursionError:
        raise RegionError(
            f"{source}: the JSON is nested too deeply to parse; a GeoJSON region needs about 8 "
            "levels: check how the file was made"
        ) from None


def _depth(obj: Any, limit: int) -> int:
    """The nesting depth of lists and dicts, measured without recursion; stops past ``limit``."""
    deepest = 0
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list | tuple):
            deepest = max(deepest, depth)
            if depth > limit:
                return depth
            children = value.values() if isinstance(value, dict) else value
            stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list | tuple))
    return deepest


# -- GeoJSON structure -----------------------------------------------------------------------------


def _is_number(v: Any) -> bool:
    return type(v) in (int, float)


def _is_finite_number(v: Any) -> bool:
    try:
        return _is_number(v) and math.isfinite(v)
    except OverflowError:  # an int beyond float range
        return False


def _error(source: str, label: str, message: str) -> RegionError:
    return RegionError(f"{source}: {label}: {message}")


class _NotAreaError(RegionError):
    """A feature whose geometry is null, empty, a point or a line: skippable in a collection."""

    def __init__(self, source: str, label: str, message: str) -> None:
        super().__init__(f"{source}: {label}: {message}")
        self.label = f"{label} ({message.split(';')[0]})"


def _check_object(obj: Any, label: str, source: str) -> str:
    """Check the members every GeoJSON object shares; return its type."""
    if not isinstance(obj, dict):
        raise _error(source, label, f"expected a GeoJSON object, got {json.dumps(obj)[:40]}")
    if "type" not in obj:
        raise _error(source, label, f'missing "type"; use one of {", ".join(_TYPES)}')
    kind = obj["type"]
    if not isinstance(kind, str):
        raise _error(source, label, f'"type" must be a string, got {json.dumps(kind)[:40]}')
    if kind not in _TYPES:
        by_case = {t.lower(): t for t in _TYPES}
        close = [by_case[kind.lower()]] if kind.lower() in by_case else []
        close = close or difflib.get_close_matches(kind, _TYPES, n=1)
        hint = (
            f'did you mean "{close[0]}"? (type names are case-sensitive)'
            if close
            else (f"use one of {', '.join(_TYPES)}")
        )
        raise _error(source, label, f'unknown type "{kind}"; {hint}')
    for member in _FORBIDDEN[kind]:
        if member in obj:
            raise _error(
                source,
                label,
                f'a {kind} must not have a "{member}" member (RFC 7946 section 7.1); remove it',
            )
    if "bbox" in obj:
        bbox = obj["bbox"]
        if not (
            isinstance(bbox, _ARRAY)
            and len(bbox) in (4, 6)
            and all(_is_finite_number(v) for v in bbox)
        ):
            raise _error(
                source,
                label,
                f'"bbox" must be an array of 4 or 6 numbers, got '
                f"{json.dumps(bbox)[:60]}; fix it or remove it",
            )
    crs = obj.get("crs")
    if crs is not None:
        name = crs.get("properties", {}).get("name") if isinstance(crs, dict) else None
        name = name if isinstance(name, str) else json.dumps(crs)[:80]
        if name.lower() not in _WGS84_NAMES:
            raise _error(
                source,
                label,
                f"crs {name} is not WGS84 lon/lat; GeoJSON (RFC 7946) is always "
                "WGS84: reproject, e.g. `ogr2ogr -t_srs EPSG:4326 out.geojson in.geojson`",
            )
    return kind


def _geometries(obj: Any, source: str) -> Iterator[tuple[str, Any]]:
    """Yield (label, geometry object) for each feature, or for a bare geometry."""
    if not isinstance(obj, dict):
        raise RegionError(
            f"{source}: the top level must be a GeoJSON object, got {json.dumps(obj)[:40]}"
        )
    kind = _check_object(obj, "the top-level object", source)
    if kind == "FeatureCollection":
        features = obj.get("features")
        if not isinstance(features, _ARRAY):
            got = "missing" if "features" not in obj else f"{json.dumps(features)[:40]}"
            raise RegionError(
                f'{source}: a FeatureCollection\'s "features" must be an array, got {got}'
            )
        if not features:
            raise RegionError(f"{source}: the FeatureCollection is empty; add a Polygon feature")
        for i, feature in enumerate(features):
            yield _feature(feature, f"feature {i}", source)
    elif kind == "Feature":
        yield _feature(obj, "the Feature", source)
    else:
        yield "the geometry", obj


def _feature(feature: Any, label: str, source: str) -> tuple[str, Any]:
    kind = _check_object(feature, label, source)
    if kind != "Feature":
        wrap = '{"type": "Feature", "properties": {}, "geometry": ...}'
        raise _error(source, label, f"expected a Feature, got a {kind}; wrap it as {wrap}")
    if "id" in feature and not (isinstance(feature["id"], str) or _is_number(feature["id"])):
        raise _error(source, label, f'"id" must be a string or a number, got {feature["id"]!r}')
    if not isinstance(feature.get("properties"), dict | None):
        raise _error(source, label, '"properties" must be an object or null')
    if "geometry" not in feature:
        raise _error(source, label, 'missing "geometry"; a region feature needs a Polygon')
    return label, feature["geometry"]


def _polygons(geometry: Any, label: str, source: str, fix_invalid: bool) -> list[shapely.Polygon]:
    """Validate one geometry object; return its valid polygons within +-180, ready to union."""
    if geometry is None:
        raise _NotAreaError(source, label, f"the geometry is null; {_NOT_AREA}")
    kind = _check_object(geometry, label, source)
    if kind == "GeometryCollection":
        members = geometry.get("geometries")
        if not isinstance(members, _ARRAY):
            raise _error(source, label, 'a GeometryCollection needs a "geometries" array')
        if not members:
            raise _NotAreaError(source, label, f"the GeometryCollection is empty; {_NOT_AREA}")
        return [
            poly
            for j, member in enumerate(members)
            for poly in _polygons(member, f"{label}, geometries[{j}]", source, fix_invalid)
        ]
    if kind not in _GEOMETRY_TYPES:
        raise _error(source, label, f"expected a geometry, got a {kind}")
    if kind not in ("Polygon", "MultiPolygon"):
        raise _NotAreaError(source, label, f"a {kind} is not an area; {_NOT_AREA}")
    coords = geometry.get("coordinates")
    if not isinstance(coords, _ARRAY):
        raise _error(source, label, f'a {kind} needs a "coordinates" array')
    if not coords:
        raise _NotAreaError(source, label, f"the {kind} is empty; {_NOT_AREA}")
    polys = [coords] if kind == "Polygon" else coords
    out = []
    for j, rings in enumerate(polys):
        where = label if kind == "Polygon" else f"{label}, polygon {j}"
        if not isinstance(rings, _ARRAY) or not rings:
            raise _error(source, where, "a polygon must be a non-empty array of rings")
        arrays = [_ring(ring, f"{where}, ring {k}", source) for k, ring in enumerate(rings)]
        out.extend(_fix_polygon(arrays, where, source, fix_invalid))
    return out


def _ring(ring: Any, label: str, source: str) -> np.ndarray:
    """Validate one linear ring; return its (n, 2) lon/lat array."""
    if not isinstance(ring, _ARRAY) or (ring and all(_is_number(v) for v in ring)):
        raise _error(
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
        if not (isinstance(p, _ARRAY) and 2 <= len(p) <= 3 and all(_is_number(v) for v in p)):
            raise _error(
                source,
                label,
                f"position {k} is {json.dumps(p)[:60]}; a position is 2 or 3 "
                "numbers [lon, lat(, height)], not strings or booleans",
            )
    if len(ring) < 4:
        raise _error(
            source,
            label,
            f"a ring needs at least 4 positions (a triangle plus the closing "
            f"position), got {len(ring)}",
        )
    try:
        xy = np.array(ring if len(lengths) == 1 else [p[:2] for p in ring], dtype=float)[:, :2]
    except OverflowError:
        raise _error(source, label, "a coordinate is too large to be a degree") from None
    bad = np.flatnonzero(~np.isfinite(xy).all(axis=1))
    if bad.size:
        raise _error(source, label, f"position {bad[0]} is NaN or infinite; fix the coordinates")
    if list(ring[0]) != list(ring[-1]):
        raise _error(
            source,
            label,
            f"the ring is not closed: first position {list(ring[0])} differs from "
            f"the last {list(ring[-1])}; repeat the first position at the end",
        )
    lon, lat = xy[:, 0], xy[:, 1]
    bad = np.flatnonzero(np.abs(lat) > 90)
    if bad.size:
        k = bad[0]
        if abs(lon[k]) <= 90:
            hint = "coordinates look like [lat, lon]; GeoJSON is [lon, lat]: swap them"
        else:
            hint = "is the file in a projected CRS? GeoJSON is WGS84 [lon, lat] degrees"
        raise _error(
            source,
            label,
            f"position {k} {list(ring[k])} has latitude {lat[k]:g}, outside [-90, 90]; {hint}",
        )
    bad = np.flatnonzero(np.abs(lon) > 360)
    if bad.size:
        k = bad[0]
        raise _error(
            source,
            label,
            f"position {k} {list(ring[k])} has longitude {lon[k]:g}, outside "
            "[-180, 180] (up to +-360 is accepted only for rings drawn across the antimeridian)",
        )
    return xy


# -- geometry --------------------------------------------------------------------------------------


def _crosses_antimeridian(rings: list[np.ndarray]) -> bool:
    for xy in rings:
        jumps = np.abs(np.diff(xy[:, 0]))
        if (np.abs(xy[:, 0]) > 180).any() or ((jumps > 180) & (jumps != 360)).any():
            return True
    return False


def _polygonal(geometry: shapely.Geometry) -> list[shapely.Polygon]:
    parts = shapely.get_parts(shapely.get_parts(geometry))
    return list(parts[shapely.get_type_id(parts) == 3])


def _repair(
    polygon: shapely.Geometry, reason: str, label: str, source: str, fix_invalid: bool
) -> list[shapely.Polygon]:
    if not fix_invalid:
        raise _error(
            source,
            label,
            f"the polygon is invalid ({reason}); fix the ring so that it does not "
            "cross itself, or pass fix_invalid=True to repair it with shapely.make_valid",
        )
    parts = _polygonal(shapely.make_valid(polygon))
    if not parts:
        raise _error(
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


def _fix_polygon(
    rings: list[np.ndarray], label: str, source: str, fix_invalid: bool
) -> list[shapely.Polygon]:
    """Make one polygon valid, split at the antimeridian, oriented; return its parts."""
    polygon = shapely.Polygon(rings[0], rings[1:])
    if not _crosses_antimeridian(rings):
        if not polygon.is_valid:
            return _repair(polygon, shapely.is_valid_reason(polygon), label, source, fix_invalid)
        return [polygon]
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
        raise _error(
            source,
            label,
            "the polygon crosses the antimeridian but cannot be split into valid "
            "parts; check that its rings do not cross themselves",
        )
    reason = f"after splitting at the antimeridian: {shapely.is_valid_reason(fixed)}"
    return _repair(fixed, reason, label, source, fix_invalid)


def _geodesic_area_km2(geometry: shapely.Geometry) -> float:
    total = 0.0
    for part in shapely.get_parts(shapely.segmentize(geometry, _DENSIFY_DEG)):
        for ring in (part.exterior, *part.interiors):  # signed: CCW exterior, CW holes
            xy = shapely.get_coordinates(ring)
            total += _GEOD.polygon_area_perimeter(xy[:, 0], xy[:, 1])[0]
    return abs(total) / 1e6


def _region(geometry: shapely.Geometry, source: str, max_area_km2: float) -> Region:
    if geometry.is_empty or geometry.geom_type not in ("Polygon", "MultiPolygon"):
        raise RegionError(f"{source}: the region has no area; {_NOT_AREA}")
    area = _geodesic_area_km2(geometry)
    if area > max_area_km2:
        raise RegionError(
            f"{source}: the region's area is {area:,.0f} km2, over the cap of "
            f"{max_area_km2:,.0f} km2; split it into smaller regions, or pass a larger "
            "max_area_km2 to raise the cap"
        )
    return Region(geometry=geometry, source=source, area_km2=area)
