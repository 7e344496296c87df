"""Hostile region files: each ends in a Region or a clear RegionError, never a traceback or a hang.

Issue #14 items 4 (invalid MultiPolygons), 9 (a FIFO blocked forever) and 10 (KML or UTF-16 got
"invalid JSON at line 1"), and hypothesis-generated GeoJSON through the reader.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from open_buildings.errors import RegionError
from open_buildings.geo.regions import Region, parse_region, read_region

KM2_PER_SQUARE_DEGREE_AT_EQUATOR = 12_308  # 1 x 1 degree at the equator, WGS84, within 1 km2


def square(x: float, y: float, d: float = 1.0) -> list[list[float]]:
    """A closed counter-clockwise ring of a d x d degree square at (x, y)."""
    return [[x, y], [x + d, y], [x + d, y + d], [x, y + d], [x, y]]


def multipolygon(*rings: list[list[float]]) -> dict:
    return {"type": "MultiPolygon", "coordinates": [[ring] for ring in rings]}


@pytest.mark.parametrize(
    ("name", "members", "union_squares"),
    [
        ("overlapping", [square(0, 0), square(0.5, 0.5)], 1.75),
        ("duplicate", [square(0, 0), square(0, 0)], 1.0),
        ("nested", [square(0, 0), square(0.2, 0.2, 0.3)], 1.0),
    ],
)
def test_an_invalid_multipolygon_is_refused_and_fix_invalid_takes_the_union(
    name: str, members: list, union_squares: float
) -> None:
    geometry = multipolygon(*members)
    with pytest.raises(RegionError, match="the MultiPolygon is invalid .*--fix-invalid"):
        parse_region(geometry)
    with pytest.warns(UserWarning, match="merged them into their union"):
        region = parse_region(geometry, fix_invalid=True)
    expected = shapely.union_all([shapely.Polygon(r) for r in members])
    assert region.geometry.equals(expected)
    assert region.area_km2 == pytest.approx(union_squares * KM2_PER_SQUARE_DEGREE_AT_EQUATOR, 0.01)


def test_a_valid_multipolygon_loads_without_a_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        region = parse_region(multipolygon(square(0, 0), square(2, 0), square(1, 1)))
        assert len(region.parts) == 3  # apart, and touching only at corners: valid
        # Members that share an edge (neighbouring districts) are unioned, as before.
        region = parse_region(multipolygon(square(0, 0), square(1, 0), square(3, 0)))
    assert len(region.parts) == 2
    assert region.area_km2 == pytest.approx(3 * KM2_PER_SQUARE_DEGREE_AT_EQUATOR, 0.01)


@pytest.mark.timeout(20)
def test_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "region.geojson"
    os.mkfifo(fifo)  # nothing ever writes to it: reading it would block forever
    with pytest.raises(RegionError, match="not a regular file"):
        read_region(fifo)


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RegionError, match="not a regular file"):
        read_region(tmp_path)


KML = b"""<?xml version="1.0" encoding="UTF-8"?>
<kml xmlns="http://www.opengis.net/kml/2.2"><Placemark><Polygon><outerBoundaryIs><LinearRing>
<coordinates>36.90,-1.31 36.91,-1.31 36.91,-1.30 36.90,-1.31</coordinates>
</LinearRing></outerBoundaryIs></Polygon></Placemark></kml>"""


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (KML, r"looks like KML, not GeoJSON; convert it .*ogr2ogr -f GeoJSON"),
        (json.dumps(multipolygon(square(0, 0))).encode("utf-16"), r"this is UTF-16 .*UTF-8"),
        (json.dumps(multipolygon(square(0, 0))).encode("utf-16-le"), r"this is UTF-16"),
        (b"PK\x03\x04" + bytes(40), r"a ZIP archive \(KMZ"),
        (b"SQLite format 3\x00" + bytes(84), r"GeoPackage"),
        (b"<!DOCTYPE html><html><body>Not found</body></html>", r"an HTML page"),
    ],
    ids=["kml", "utf-16-bom", "utf-16le", "kmz", "geopackage", "html"],
)
def test_a_file_that_is_not_geojson_says_what_it_looks_like(
    tmp_path: Path, content: bytes, says: str
) -> None:
    path = tmp_path / "region.geojson"
    path.write_bytes(content)
    with pytest.raises(RegionError, match=says) as caught:
        read_region(path)
    assert "invalid JSON at line 1" not in str(caught.value)


# -- generated GeoJSON ----------------------------------------------------------------------------

NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-200, 200),
    st.integers(-(10**30), 10**30),
    st.sampled_from([0, 180, -180, 90, -90, 1e308, -1e-308]),
)
LEAVES = st.one_of(NUMBERS, st.text(max_size=5), st.booleans(), st.none())
JSONISH = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=40,
)
POSITION = st.lists(NUMBERS, min_size=0, max_size=4)
RING = st.lists(POSITION, min_size=0, max_size=7)
GEOMETRY = st.one_of(
    st.fixed_dictionaries({"type": st.just("Polygon"), "coordinates": st.lists(RING, max_size=3)}),
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["MultiPolygon", "Polygon", "Point", "polygon", "Feature"]),
            "coordinates": st.one_of(st.lists(st.lists(RING, max_size=2), max_size=3), JSONISH),
        }
    ),
)
DOCUMENT = st.one_of(
    GEOMETRY,
    JSONISH,
    st.builds(
        lambda geoms, extra: {
            "type": "FeatureCollection",
            "features": [{"type": "Feature", "properties": extra, "geometry": g} for g in geoms],
        },
        st.lists(st.one_of(GEOMETRY, st.none(), JSONISH), max_size=4),
        st.one_of(st.none(), st.dictionaries(st.text(max_size=4), LEAVES, max_size=2), LEAVES),
    ),
)


def _check(region: Region) -> None:
    assert region.geometry.is_valid and not region.geometry.is_empty
    west, south, east, north = region.bounds
    assert -180 <= west <= east <= 180 and -90 <= south <= north <= 90
    assert math.isfinite(region.area_km2) and 0 <= region.area_km2 <= 1_000_000


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCUMENT, st.booleans())
def test_generated_geojson_gives_a_region_or_a_region_error(doc, fix_invalid: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            region = parse_region(doc, fix_invalid=fix_invalid)
        except RegionError as exc:
            assert str(exc).strip()
            return
    _check(region)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300) | DOCUMENT.map(lambda d: json.dumps(d).encode()[:300]))
def test_generated_bytes_give_a_region_or_a_region_error(tmp_path_factory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("gen") / "region.geojson"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            region = read_region(path)
        except RegionError:
            return
    _check(region)
