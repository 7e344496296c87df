"""GeoJSON text read safely, and its objects checked against RFC 7946's structure rules.

:func:`load_json` parses bytes with a depth cap measured on the raw text (before the recursive
``json`` parser sees it) and refuses duplicate keys; :func:`geometries` walks a FeatureCollection,
Feature or geometry, checking each object's type, members (section 7.1), ``bbox`` and ``crs``,
and yields each geometry with the label errors name it by (``"feature 3"``). The rules and the
decisions behind them are listed in :mod:`open_buildings.geo.regions`, which builds the region.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Iterator
from typing import Any

import numpy as np

from open_buildings.errors import RegionError

GEOMETRY_TYPES = (
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
    "GeometryCollection",
)
TYPES = (*GEOMETRY_TYPES, "Feature", "FeatureCollection")
# RFC 7946 section 7.1: members that would change an object's meaning.
FORBIDDEN = {
    "FeatureCollection": ("coordinates", "geometries", "geometry", "properties"),
    "Feature": ("coordinates", "geometries", "features"),
    **{t: ("geometry", "properties", "features") for t in GEOMETRY_TYPES},
}
WGS84_NAMES = {
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
ARRAY = (list, tuple)  # JSON arrays; tuples too, as from __geo_interface__
NOT_AREA = "a region must be a Polygon or MultiPolygon: remove it or buffer it into a polygon"


class _DuplicateKeyError(ValueError):
    pass


def too_big(source: str, size: int, max_bytes: int) -> RegionError:
    """The error for a region file over the size cap."""
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


def too_deep(source: str, max_depth: int) -> RegionError:
    """The error for GeoJSON nested deeper than the cap."""
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


#: What a file that is not GeoJSON looks like from its first bytes, and what to do about it.
_CONVERT = "convert it to GeoJSON with ogr2ogr -f GeoJSON region.geojson {kind_file}"
_FOREIGN: tuple[tuple[tuple[bytes, ...], str, str], ...] = (
    ((b"PK\x03\x04",), "a ZIP archive (KMZ or a zipped shapefile?)", "unzip it, then " + _CONVERT),
    ((b"SQLite format 3\x00",), "a GeoPackage/SQLite file", _CONVERT),
    ((b"fgb\x03",), "FlatGeobuf", _CONVERT),
    ((b"PAR1",), "Parquet (GeoParquet?)", _CONVERT),
    ((b"\x00\x00\x27\x0a",), "a shapefile (.shp)", _CONVERT),
)
_XML = ((b"<kml", "KML"), (b"<gpx", "GPX"), (b"<gml", "GML"), (b"<html", "an HTML page"))


def describe_foreign(data: bytes, source: str = "FILE") -> str | None:
    """Say what non-GeoJSON bytes look like and how to convert them, or None if unrecognised."""
    head = data[:4096]
    wide = len(head) > 3 and head[1:4:2] == b"\x00\x00"  # ASCII text with NUL bytes between
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or wide:
        return (
            "this is UTF-16 (or another wide encoding), and GeoJSON must be UTF-8: save it "
            f"as UTF-8 (in an editor, or iconv -f UTF-16 -t UTF-8 {source} > region.geojson)"
        )
    for magics, kind, advice in _FOREIGN:
        if head.startswith(magics):
            return f"this looks like {kind}, not GeoJSON; " + advice.format(kind_file=source)
    lowered = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if lowered.startswith(b"<"):
        kind = next((name for tag, name in _XML if tag in lowered), "XML")
        if kind == "an HTML page":
            return "this looks like an HTML page (did a download return a web page?), not GeoJSON"
        return f"this looks like {kind}, not GeoJSON; " + _CONVERT.format(kind_file=source)
    return None


def load_json(data: bytes, source: str, max_depth: int) -> Any:
    """Parse GeoJSON bytes: UTF-8 (a BOM is skipped), depth-capped, duplicate keys refused.

    Bytes that are not JSON at all (KML, UTF-16, a GeoPackage, ...) get a message that says
    what the file looks like and how to convert it (:func:`describe_foreign`).
    """
    foreign = describe_foreign(data, source)
    if foreign is not None:
        raise RegionError(f"{source}: {foreign}")
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
        raise too_deep(source, max_depth)
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


def json_depth(obj: Any, limit: int) -> int:
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


def is_number(v: Any) -> bool:
    """True for a JSON number (an int or float, not a bool)."""
    return type(v) in (int, float)


def is_finite_number(v: Any) -> bool:
    """True for a JSON number that is neither NaN nor infinite."""
    try:
        return is_number(v) and math.isfinite(v)
    except OverflowError:  # an int beyond float range
        return False


def region_error(source: str, label: str, message: str) -> RegionError:
    """A ``RegionError`` naming the input and the object (``"feature 3: ..."``)."""
    return RegionError(f"{source}: {label}: {message}")


class NotAreaError(RegionError):
    """A feature whose geometry is null, empty, a point or a line: skippable in a collection."""

    def __init__(self, source: str, label: str, message: str) -> None:
        super().__init__(f"{source}: {label}: {message}")
        self.label = f"{label} ({message.split(';')[0]})"


def check_object(obj: Any, label: str, source: str) -> str:
    """Check the members every GeoJSON object shares; return its type."""
    if not isinstance(obj, dict):
        raise region_error(source, label, f"expected a GeoJSON object, got {json.dumps(obj)[:40]}")
    if "type" not in obj:
        raise region_error(source, label, f'missing "type"; use one of {", ".join(TYPES)}')
    kind = obj["type"]
    if not isinstance(kind, str):
        raise region_error(source, label, f'"type" must be a string, got {json.dumps(kind)[:40]}')
    if kind not in TYPES:
        by_case = {t.lower(): t for t in TYPES}
        close = [by_case[kind.lower()]] if kind.lower() in by_case else []
        close = close or difflib.get_close_matches(kind, TYPES, n=1)
        hint = (
            f'did you mean "{close[0]}"? (type names are case-sensitive)'
            if close
            else (f"use one of {', '.join(TYPES)}")
        )
        raise region_error(source, label, f'unknown type "{kind}"; {hint}')
    for member in FORBIDDEN[kind]:
        if member in obj:
            raise region_error(
                source,
                label,
                f'a {kind} must not have a "{member}" member (RFC 7946 section 7.1); remove it',
            )
    if "bbox" in obj:
        bbox = obj["bbox"]
        if not (
            isinstance(bbox, ARRAY)
            and len(bbox) in (4, 6)
            and all(is_finite_number(v) for v in bbox)
        ):
            raise region_error(
                source,
                label,
                f'"bbox" must be an array of 4 or 6 numbers, got '
                f"{json.dumps(bbox)[:60]}; fix it or remove it",
            )
    crs = obj.get("crs")
    if crs is not None:
        name = crs.get("properties", {}).get("name") if isinstance(crs, dict) else None
        name = name if isinstance(name, str) else json.dumps(crs)[:80]
        if name.lower() not in WGS84_NAMES:
            raise region_error(
                source,
                label,
                f"crs {name} is not WGS84 lon/lat; GeoJSON (RFC 7946) is always "
                "WGS84: reproject, e.g. `ogr2ogr -t_srs EPSG:4326 out.geojson in.geojson`",
            )
    return kind


def geometries(obj: Any, source: str) -> Iterator[tuple[str, Any]]:
    """Yield (label, geometry object) for each feature, or for a bare geometry."""
    if not isinstance(obj, dict):
        raise RegionError(
            f"{source}: the top level must be a GeoJSON object, got {json.dumps(obj)[:40]}"
        )
    kind = check_object(obj, "the top-level object", source)
    if kind == "FeatureCollection":
        features = obj.get("features")
        if not isinstance(features, ARRAY):
            got = "missing" if "features" not in obj else f"{json.dumps(features)[:40]}"
            raise RegionError(
                f'{source}: a FeatureCollection\'s "features" must be an array, got {got}'
            )
        if not features:
            raise RegionError(f"{source}: the FeatureCollection is empty; add a Polygon feature")
        for i, feature in enumerate(features):
            yield check_feature(feature, f"feature {i}", source)
    elif kind == "Feature":
        yield check_feature(obj, "the Feature", source)
    else:
        yield "the geometry", obj


def check_feature(feature: Any, label: str, source: str) -> tuple[str, Any]:
    """Check one member of a FeatureCollection; return its label and geometry."""
    kind = check_object(feature, label, source)
    if kind != "Feature":
        wrap = '{"type": "Feature", "properties": {}, "geometry": ...}'
        raise region_error(source, label, f"expected a Feature, got a {kind}; wrap it as {wrap}")
    if "id" in feature and not (isinstance(feature["id"], str) or is_number(feature["id"])):
        raise region_error(
            source, label, f'"id" must be a string or a number, got {feature["id"]!r}'
        )
    if not isinstance(feature.get("properties"), dict | None):
        raise region_error(source, label, '"properties" must be an object or null')
    if "geometry" not in feature:
        raise region_error(source, label, 'missing "geometry"; a region feature needs a Polygon')
    return label, feature["geometry"]
