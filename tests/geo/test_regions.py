"""Tests for open_buildings.geo.regions: reading and validating region GeoJSON.

Fixtures are real files from geojsonhint's and antimeridian's test suites (see
tests/data/regions/PROVENANCE.md).
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import shapely
from pyproj import Geod

from open_buildings.errors import RegionError
from open_buildings.geo.regions import Region, parse_region, read_region, region_from_bbox

DATA = Path(__file__).parent.parent / "data" / "regions"
HINT_BAD = DATA / "geojsonhint" / "bad"
HINT_GOOD = DATA / "geojsonhint" / "good"
ANTIMERIDIAN = DATA / "antimeridian"
NO_CAP = math.inf
NOT_AREA = "remove it or buffer it into a polygon"

SQUARE = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]


def polygon(ring: list, *holes: list) -> dict:
    return {"type": "Polygon", "coordinates": [ring, *holes]}


def feature(geometry: dict | None) -> dict:
    return {"type": "Feature", "properties": {}, "geometry": geometry}


def collection(*geometries: dict | None) -> dict:
    return {"type": "FeatureCollection", "features": [feature(g) for g in geometries]}


def same_shape(actual: shapely.Geometry, expected: shapely.Geometry) -> bool:
    """Exact equality of coordinates, ignoring ring start, ring direction and part order."""
    return shapely.normalize(actual).equals_exact(shapely.normalize(expected), tolerance=0)


def assert_well_formed(region: Region) -> None:
    assert region.geometry.geom_type in ("Polygon", "MultiPolygon")
    assert region.geometry.is_valid
    for part in region.parts:
        west, south, east, north = part.bounds
        assert -180 <= west <= east <= 180
        assert -90 <= south <= north <= 90
        assert part.exterior.is_ccw
        assert not any(ring.is_ccw for ring in part.interiors)
    assert region.area_km2 > 0


# -- every geojsonhint file ------------------------------------------------------------------------

# What each of geojsonhint's "bad" files must say (a specific part of the message).
BAD_MESSAGES = {
    "bad-duplicate-properties.geojson": 'duplicate key "type"',
    "bad-featurelist.geojson": "ring must be an array of [lon, lat] positions, got 5",
    "bad-json.geojson": "invalid JSON at line 3, column 5",
    "bad-object-type.geojson": '"type" must be a string',
    "bad-polygonloop.geojson": "nest as [[[lon, lat], ...]]",
    "bad-properties-as-array.geojson": '"properties" must be an object or null',
    "badcoord.geojson": "a Point is not an area",
    "badcoordtype.geojson": "feature 0, polygon 0, ring 0: a ring must be an array",
    "badfeature.geojson": "feature 0: expected a GeoJSON object, got null",
    "badfeatureid.geojson": 'feature 0: "id" must be a string or a number',
    "bbox-4or6elements.geojson": '"bbox" must be an array of 4 or 6 numbers, got [1, 2, 3]',
    "bbox-contains-string.geojson": '"bbox" must be an array of 4 or 6 numbers',
    "bbox-string.geojson": '"bbox" must be an array of 4 or 6 numbers, got "string"',
    "different-first-last.geojson": "the ring is not closed",
    "different-first-size.geojson": "polygon 1, ring 0: the ring is not closed",
    "excessive_precision_truncated.geojson": "a LineString is not an area",
    "expected_object.geojson": '"properties" must be an object or null',
    "false.geojson": "geometries[0]: expected a GeoJSON object, got false",
    "feature_changed_semantics.geojson": 'a Feature must not have a "coordinates" member',
    "featurecollection-obj.geojson": '"features" must be an array, got {}',
    "featurecollection-type-case.geojson": 'did you mean "FeatureCollection"',
    "featurecollection.geojson": '"features" must be an array, got missing',
    "featurecollection_changed_semantics.geojson": 'must not have a "coordinates" member',
    "geometry_changed_semantics.geojson": 'a Point must not have a "geometry" member',
    "geometrycollection_nested.geojson": "geometries[0]: a Point is not an area",
    "geometrycollection_single.geojson": "geometries[0]: a Point is not an area",
    "multiple_problems.geojson": 'feature 0: "id" must be a string or a number',
    "multipoint-multidimension.geojson": "a MultiPoint is not an area",
    "multipoint-nondimension.geojson": "a MultiPoint is not an area",
    "nofeaturetype.geojson": 'feature 0: unknown type "Featre"; did you mean "Feature"',
    "notype.geojson": 'missing "type"',
    "point-labeled-as-a-multipolygon.geojson": "polygon 0: a polygon must be a non-empty array",
    "point-string.geojson": "a Point is not an area",
    "point-toofew.geojson": "a Point is not an area",
    "point-toomany.geojson": "a Point is not an area",
    "point.geojson": "a Point is not an area",
    "rootstring.geojson": "the top level must be a GeoJSON object, got null",
    "short-line.geojson": "a LineString is not an area",
    "short-linearring.geojson": "a ring needs at least 4 positions",
    "short-multilinestring.geojson": "a MultiLineString is not an area",
    "stringcoord.geojson": "feature 0: a Point is not an area",
    "unknowntype.geojson": 'unknown type "FooBar"; use one of Point',
}
# geojsonhint flags these for ring orientation; RFC 7946 lets a reader normalise it instead.
BAD_BUT_REPAIRED = {
    "bad-polygon-interiorring-rhr.geojson": shapely.Polygon(
        [(100, 0), (101, 0), (101, 1), (100, 1)],
        [[(100.2, 0.2), (100.8, 0.2), (100.8, 0.8), (100.2, 0.8)]],
    ),
    "polygon_winding_order.geojson": shapely.box(100, 0, 101, 1),
}


def test_every_bad_file_is_classified() -> None:
    names = {p.name for p in HINT_BAD.iterdir()}
    assert names == set(BAD_MESSAGES) | set(BAD_BUT_REPAIRED)


@pytest.mark.parametrize("name", sorted(BAD_MESSAGES))
def test_geojsonhint_bad_files_raise_a_specific_error(name: str) -> None:
    with pytest.raises(RegionError) as info:
        read_region(HINT_BAD / name)
    message = str(info.value)
    assert BAD_MESSAGES[name] in message
    assert message.startswith(str(HINT_BAD / name))


@pytest.mark.parametrize("name", sorted(BAD_BUT_REPAIRED))
def test_geojsonhint_bad_winding_is_normalised(name: str) -> None:
    region = read_region(HINT_BAD / name)
    assert_well_formed(region)
    assert same_shape(region.geometry, BAD_BUT_REPAIRED[name])


GOOD_POLYGONS = {
    "good-polygon.geojson": shapely.box(100, 0, 101, 1),
    "multipolygon.geojson": shapely.MultiPolygon(
        [
            shapely.box(102, 2, 103, 3),
            shapely.Polygon(
                [(100, 0), (101, 0), (101, 1), (100, 1)],
                [[(100.2, 0.2), (100.8, 0.2), (100.8, 0.8), (100.2, 0.8)]],
            ),
        ]
    ),
}
GOOD_REJECTED = {
    # Planar test data with |latitude| > 90: not WGS84, whatever geojsonhint says.
    "issue82.geojson": "latitude -107.209, outside [-90, 90]; is the file in a projected CRS?",
    "nullgeometry.geojson": "feature 0: the geometry is null",
}
# Mixed collections: the polygon loads; the point and the line are skipped with a warning.
GOOD_MIXED = {"good-featurecollection.geojson", "good-featurecollection-extensions.geojson"}


@pytest.mark.parametrize("name", sorted(p.name for p in HINT_GOOD.iterdir()))
def test_geojsonhint_good_files(name: str) -> None:
    if name in GOOD_MIXED:
        with pytest.warns(
            UserWarning, match="feature 0 .a Point is not an area.; feature 1 .a Line"
        ):
            region = read_region(HINT_GOOD / name)
        assert same_shape(region.geometry, shapely.box(100, 0, 101, 1))
        return
    if name in GOOD_POLYGONS:
        region = read_region(HINT_GOOD / name)
        assert_well_formed(region)
        assert same_shape(region.geometry, GOOD_POLYGONS[name])
        return
    with pytest.raises(RegionError) as info:
        read_region(HINT_GOOD / name)
    assert GOOD_REJECTED.get(name, "is not an area") in str(info.value)
    if name not in GOOD_REJECTED:
        assert NOT_AREA in str(info.value)


# -- antimeridian ----------------------------------------------------------------------------------

ANTIMERIDIAN_ERRORS = {
    "line.json": "a LineString is not an area",
    "multi-line.json": "a MultiLineString is not an area",
    "issues-187.json": "ring 0: the ring is not closed",
    "issues-182.json": "the polygon is invalid (Self-intersection[41.677091 27.556499])",
    # Satellite swaths that overlap themselves once split: genuinely self-intersecting.
    "force-north-pole.json": "after splitting at the antimeridian: Self-intersection",
    "overlap.json": "after splitting at the antimeridian: Self-intersection",
}
ANTIMERIDIAN_LOADED = sorted(
    p.name for p in ANTIMERIDIAN.iterdir() if p.name not in ANTIMERIDIAN_ERRORS
)
GEOD = Geod(ellps="WGS84")


def continuous_area_km2(obj: dict) -> float | None:
    """Geodesic area of the input's rings unwrapped across 180; None if a ring circles a pole."""
    polys = [obj["coordinates"]] if obj["type"] == "Polygon" else obj["coordinates"]
    total = 0.0
    for rings in polys:
        for k, ring in enumerate(rings):
            xy = np.asarray(ring, dtype=float)[:, :2]
            xy[:, 0] = np.unwrap(xy[:, 0], period=360)
            if not np.allclose(xy[0], xy[-1]) or np.ptp(xy[:, 0]) == 0:
                return None  # circles a pole, or (latitude-band.json) the whole globe
            dense = shapely.get_coordinates(shapely.segmentize(shapely.LineString(xy), 0.1))
            area = abs(GEOD.polygon_area_perimeter(dense[:, 0], dense[:, 1])[0]) / 1e6
            total += area if k == 0 else -area
    return total


@pytest.mark.parametrize("name", sorted(ANTIMERIDIAN_ERRORS))
def test_antimeridian_files_that_are_errors(name: str) -> None:
    with pytest.raises(RegionError) as info:
        read_region(ANTIMERIDIAN / name, max_area_km2=NO_CAP)
    assert ANTIMERIDIAN_ERRORS[name] in str(info.value)


# More than half the Earth once split: a geodesic ring formula gives the complement's area (the
# region used to be measured that way), so its area is checked by sampling the sphere instead.
LARGER_THAN_HALF_THE_EARTH = {"both-poles.json"}
EARTH_KM2 = 510_065_621.7  # the WGS84 ellipsoid's surface


@pytest.mark.parametrize("name", ANTIMERIDIAN_LOADED)
def test_antimeridian_files_load_within_bounds(name: str) -> None:
    region = read_region(ANTIMERIDIAN / name, max_area_km2=NO_CAP)
    assert_well_formed(region)
    expected = continuous_area_km2(json.loads((ANTIMERIDIAN / name).read_text()))
    if expected is not None and name not in LARGER_THAN_HALF_THE_EARTH:
        # Both follow lon/lat-straight edges densified at 0.1 degree, one with geodesic chords,
        # the other in an equal-area projection: they agree to 1e-5.
        assert region.area_km2 == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("name", sorted(LARGER_THAN_HALF_THE_EARTH))
def test_the_area_of_a_region_larger_than_half_the_earth(name: str) -> None:
    region = read_region(ANTIMERIDIAN / name, max_area_km2=NO_CAP)
    # Points uniform on the (authalic) sphere: the share inside is the share of the area.
    rng = np.random.default_rng(0)
    n = 400_000
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    lon = rng.uniform(-180, 180, n)
    share = shapely.contains_xy(region.geometry, lon, lat).mean()
    assert share > 0.5
    assert region.area_km2 == pytest.approx(share * EARTH_KM2, rel=0.005)


@pytest.mark.parametrize("name", ["force-north-pole.json", "overlap.json", "issues-182.json"])
def test_antimeridian_invalid_files_repair_with_fix_invalid(name: str) -> None:
    with pytest.warns(UserWarning, match="repaired an invalid polygon"):
        region = read_region(ANTIMERIDIAN / name, max_area_km2=NO_CAP, fix_invalid=True)
    assert_well_formed(region)


@pytest.mark.parametrize("name", ["split.json", "over-180.json", "cw-split.json"])
def test_split_at_180_exactly(name: str) -> None:
    region = read_region(ANTIMERIDIAN / name, max_area_km2=NO_CAP)
    expected = shapely.MultiPolygon(
        [shapely.box(170, 40, 180, 50), shapely.box(-180, 40, -170, 50)]
    )
    assert same_shape(region.geometry, expected)
    assert len(region.parts) == 2
    assert region.bounds == (-180.0, 40.0, 180.0, 50.0)


def test_simple_does_not_cross_and_is_unchanged() -> None:
    # antimeridian's simple.json lies at 90..100 E: one part, coordinates as given.
    region = read_region(ANTIMERIDIAN / "simple.json")
    assert len(region.parts) == 1
    assert region.geometry.equals_exact(
        shapely.Polygon([(100, 40), (100, 50), (90, 50), (90, 40), (100, 40)]), tolerance=0
    )


def test_latitude_band_goes_round_the_globe() -> None:
    region = read_region(ANTIMERIDIAN / "latitude-band.json", max_area_km2=NO_CAP)
    assert same_shape(region.geometry, shapely.box(-180, 40, 180, 50))
    # The zone between two parallels: 2 pi b^2 [q(phi)] / 2 on the ellipsoid; about 31.5e6 km2.
    assert region.area_km2 == pytest.approx(31.5e6, rel=0.005)


def test_north_pole_ring_is_closed_over_the_pole() -> None:
    region = read_region(ANTIMERIDIAN / "north-pole.json", max_area_km2=NO_CAP)
    assert region.bounds == (-180.0, 40.0, 180.0, 90.0)
    assert region.geometry.covers(shapely.Point(0, 89.9))
    # The cap north of 40 N, edges straight in lon/lat: a little under 2 pi R^2 (1 - sin 40).
    assert region.area_km2 == pytest.approx(91.5e6, rel=0.01)


def test_longitude_beyond_360_is_an_error() -> None:
    ring = [[370, 0], [371, 0], [371, 1], [370, 1], [370, 0]]
    with pytest.raises(RegionError, match=r"longitude 370, outside \[-180, 180\]"):
        parse_region(polygon(ring))


# -- coordinates -----------------------------------------------------------------------------------


def test_swapped_lat_lon_says_so() -> None:
    # Jakarta (6.2 S, 106.8 E) written as [lat, lon]: "latitude" 106.8 is impossible.
    ring = [[-6.3, 106.7], [-6.3, 106.9], [-6.1, 106.9], [-6.1, 106.7], [-6.3, 106.7]]
    with pytest.raises(RegionError) as info:
        parse_region(collection(polygon(SQUARE), polygon(ring)))
    message = str(info.value)
    assert "feature 1, ring 0: position 0 [-6.3, 106.7] has latitude 106.7" in message
    assert "coordinates look like [lat, lon]; GeoJSON is [lon, lat]" in message


@pytest.mark.parametrize(
    ("position", "expected"),
    [
        ([math.nan, 0.0], "position 1 is NaN or infinite"),
        ([math.inf, 0.0], "position 1 is NaN or infinite"),
        (["1", 0.0], 'position 1 is ["1", 0.0]'),
        ([True, 0.0], "position 1 is [true, 0.0]"),
        ([1.0], "position 1 is [1.0]; a position is 2 or 3 numbers"),
        ([1.0, 0.0, 0.0, 0.0], "position 1 is [1.0, 0.0, 0.0, 0.0]; a position is 2 or 3"),
        (None, "position 1 is null"),
        ([10**400, 0], "a coordinate is too large"),
    ],
)
def test_bad_positions(position: list, expected: str) -> None:
    ring = [[0.0, 0.0], position, [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]
    with pytest.raises(RegionError) as info:
        parse_region(feature(polygon(ring)))
    assert f"the Feature, ring 0: {expected}" in str(info.value)


def test_nan_literal_in_a_file(tmp_path: Path) -> None:
    path = tmp_path / "nan.geojson"
    path.write_text('{"type": "Polygon", "coordinates": [[[0, 0], [NaN, 0], [1, 1], [0, 0]]]}')
    with pytest.raises(RegionError, match="position 1 is NaN or infinite"):
        read_region(path)


def test_third_coordinate_is_dropped() -> None:
    ring = [[0, 0, 5], [1, 0, 5], [1, 1, 5], [0, 1, 5], [0, 0, 5]]
    region = parse_region(polygon(ring))
    assert not region.geometry.has_z
    assert same_shape(region.geometry, shapely.box(0, 0, 1, 1))


# -- structure -------------------------------------------------------------------------------------


def test_bare_polygon() -> None:
    region = parse_region(polygon(SQUARE))
    assert region.source == "<dict>"
    assert region.geometry.equals_exact(shapely.Polygon(SQUARE), tolerance=0)
    assert region.bounds == (0.0, 0.0, 1.0, 1.0)
    # 1 degree square at the equator: 110.57 km (meridian) x 111.32 km (equator).
    assert region.area_km2 == pytest.approx(12308.8, rel=1e-4)


def test_feature() -> None:
    region = parse_region(feature(polygon(SQUARE)), source="mine")
    assert region.source == "mine"
    assert same_shape(region.geometry, shapely.box(0, 0, 1, 1))


def test_collection_of_two_polygons_is_their_union() -> None:
    other = [[1.0, 0.0], [2.0, 0.0], [2.0, 1.0], [1.0, 1.0], [1.0, 0.0]]
    far = [[10.0, 10.0], [11.0, 10.0], [11.0, 11.0], [10.0, 11.0], [10.0, 10.0]]
    touching = parse_region(collection(polygon(SQUARE), polygon(other)))
    assert touching.geometry.equals(shapely.box(0, 0, 2, 1))  # the shared edge is gone
    assert touching.geometry.geom_type == "Polygon"
    apart = parse_region(collection(polygon(SQUARE), polygon(far)))
    assert apart.geometry.geom_type == "MultiPolygon"
    assert len(apart.parts) == 2


def test_geometry_collection_of_polygons() -> None:
    gc = {"type": "GeometryCollection", "geometries": [polygon(SQUARE)]}
    assert same_shape(parse_region(gc).geometry, shapely.box(0, 0, 1, 1))


def test_mixed_collection_loads_polygons_and_names_what_it_skipped() -> None:
    line = {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}
    with pytest.warns(
        UserWarning,
        match=r"skipped 2 feature\(s\).*feature 1 \(a LineString is not"
        r" an area\); feature 3 \(the geometry is null\)",
    ):
        region = parse_region(collection(polygon(SQUARE), line, polygon(SQUARE), None))
    assert same_shape(region.geometry, shapely.Polygon(SQUARE))


def test_collection_without_any_polygon_is_an_error() -> None:
    line = {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}
    with pytest.raises(RegionError) as info:
        parse_region(collection(line, None))
    assert "feature 0: a LineString is not an area" in str(info.value)
    assert NOT_AREA in str(info.value)


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"type": "FeatureCollection", "features": []}, "the FeatureCollection is empty"),
        (collection(None), "feature 0: the geometry is null"),
        ({"type": "Polygon", "coordinates": []}, "the Polygon is empty"),
        ({"type": "MultiPolygon", "coordinates": []}, "the MultiPolygon is empty"),
        ({"type": "Feature", "properties": {}}, 'missing "geometry"'),
        ({"type": "Feature", "geometry": []}, "expected a GeoJSON object, got []"),
        ({"type": "Polygon"}, 'a Polygon needs a "coordinates" array'),
        (
            {"type": "Feature", "geometry": {"type": "Feature"}},
            "expected a geometry, got a Feature",
        ),
        ([polygon(SQUARE)], "the top level must be a GeoJSON object"),
        ({"type": "polygon", "coordinates": [SQUARE]}, 'did you mean "Polygon"'),
        ({"type": "Polygon", "coordinates": [SQUARE], "bbox": [0, 0, 1, math.nan]}, '"bbox"'),
        ({"type": "Polygon", "coordinates": [SQUARE], "bbox": [0, 0, 1, True]}, '"bbox"'),
    ],
)
def test_structural_errors(obj: object, expected: str) -> None:
    with pytest.raises(RegionError) as info:
        parse_region(obj)
    assert expected in str(info.value)


def test_valid_bbox_members_are_accepted() -> None:
    for bbox in ([0, 0, 1, 1], [0, 0, 0, 1, 1, 0]):
        parse_region({**polygon(SQUARE), "bbox": bbox})


@pytest.mark.parametrize(
    "name",
    [
        "urn:ogc:def:crs:OGC:1.3:CRS84",
        "urn:ogc:def:crs:EPSG::4326",
        "EPSG:4326",
        "http://www.opengis.net/def/crs/OGC/1.3/CRS84",
    ],
)
def test_wgs84_crs_is_accepted(name: str) -> None:
    crs = {"type": "name", "properties": {"name": name}}
    parse_region({**collection(polygon(SQUARE)), "crs": crs})


def test_other_crs_is_rejected() -> None:
    crs = {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::3857"}}
    with pytest.raises(RegionError) as info:
        parse_region({**collection(polygon(SQUARE)), "crs": crs})
    assert "crs urn:ogc:def:crs:EPSG::3857 is not WGS84 lon/lat" in str(info.value)
    assert "ogr2ogr -t_srs EPSG:4326" in str(info.value)


# -- orientation and validity ----------------------------------------------------------------------


def test_orientation_is_normalised() -> None:
    clockwise = SQUARE[::-1]
    hole_ccw = [[0.2, 0.2], [0.8, 0.2], [0.8, 0.8], [0.2, 0.8], [0.2, 0.2]]
    region = parse_region(polygon(clockwise, hole_ccw))
    (part,) = region.parts
    assert part.exterior.is_ccw
    assert not part.interiors[0].is_ccw
    assert same_shape(region.geometry, shapely.Polygon(SQUARE, [hole_ccw]))


BOWTIE = [[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]


def test_self_intersection_is_an_error() -> None:
    with pytest.raises(RegionError) as info:
        parse_region(collection(polygon(SQUARE), polygon(BOWTIE)))
    message = str(info.value)
    assert "feature 1: the polygon is invalid (Self-intersection[0.5 0.5])" in message
    assert "fix_invalid=True" in message


def test_fix_invalid_repairs_and_warns() -> None:
    with pytest.warns(UserWarning, match=r"feature 0: repaired an invalid polygon .* 2 polygon"):
        region = parse_region(collection(polygon(BOWTIE)), fix_invalid=True)
    expected = shapely.MultiPolygon(
        [
            shapely.Polygon([(0, 0), (0.5, 0.5), (0, 1)]),
            shapely.Polygon([(1, 0), (1, 1), (0.5, 0.5)]),
        ]
    )
    assert same_shape(region.geometry, expected)
    assert_well_formed(region)


def test_valid_input_does_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parse_region(polygon(SQUARE), fix_invalid=True)


# -- caps ------------------------------------------------------------------------------------------


def test_area_cap() -> None:
    big = shapely.geometry.mapping(shapely.box(0, 0, 20, 20))
    with pytest.raises(RegionError) as info:
        parse_region(big, max_area_km2=1_000_000)
    message = str(info.value)
    assert re.search(r"the region's area is 4,8\d\d,\d\d\d km2", message)
    assert "over the cap of 1,000,000 km2" in message
    assert "max_area_km2" in message
    assert parse_region(big, max_area_km2=5_000_000).area_km2 == pytest.approx(4.83e6, rel=0.01)


def test_too_big_file_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "region.geojson"
    path.write_text(json.dumps(polygon(SQUARE)))
    with pytest.raises(RegionError, match=r"over the cap of 10; .* raise max_bytes"):
        read_region(path, max_bytes=10)


def test_deep_json_file(tmp_path: Path) -> None:
    path = tmp_path / "deep.geojson"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(RegionError, match="nested more than 64 levels deep"):
        read_region(path)  # measured on the text, before parsing
    with pytest.raises(RegionError, match="nested too deeply to parse"):
        read_region(path, max_depth=10**6)  # json's own RecursionError, caught


def test_depth_cap_after_parsing(tmp_path: Path) -> None:
    deep: list = []
    for _ in range(100):
        deep = [deep]
    obj = {**polygon(SQUARE), "foreign": deep}
    with pytest.raises(RegionError, match="nested more than 64 levels deep"):
        parse_region(obj)
    path = tmp_path / "deep.geojson"
    path.write_text(json.dumps(obj))
    with pytest.raises(RegionError, match="nested more than 64 levels deep"):
        read_region(path)
    assert parse_region(obj, max_depth=200).area_km2 > 0


def test_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.geojson"
    path.write_text('{"type": "Polygon",\n  "coordinates": [[[0, 0], [1, 0]],]\n}')
    with pytest.raises(RegionError, match="invalid JSON at line 2, column"):
        read_region(path)


def test_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.geojson"
    path.write_bytes('{"type": "Feature", "properties": {"name": "Bogotá"}}'.encode("latin-1"))
    with pytest.raises(RegionError, match="not UTF-8 .*line 1, column 50.*re-save"):
        read_region(path)


def test_utf8_bom_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "bom.geojson"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(polygon(SQUARE)).encode())
    assert read_region(path).source == str(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RegionError, match="cannot read the region file"):
        read_region(tmp_path / "nope.geojson")


# -- bbox ------------------------------------------------------------------------------------------


def test_region_from_bbox() -> None:
    region = region_from_bbox(0, 0, 1, 1)
    assert same_shape(region.geometry, shapely.box(0, 0, 1, 1))
    assert region.geometry.exterior.is_ccw
    assert region.area_km2 == pytest.approx(parse_region(polygon(SQUARE)).area_km2)


def test_region_from_bbox_across_the_antimeridian() -> None:
    region = region_from_bbox(170, 40, -170, 50, max_area_km2=NO_CAP)
    expected = read_region(ANTIMERIDIAN / "split.json", max_area_km2=NO_CAP)
    assert same_shape(region.geometry, expected.geometry)
    assert_well_formed(region)


@pytest.mark.parametrize(
    ("bounds", "expected"),
    [
        ((0, 1, 1, 0), "south < north"),
        ((0, 0, 0, 1), "no width"),
        ((0, 0, 181, 1), r"\[-180, 180\]"),
        ((0, 0, math.nan, 1), "finite"),
        ((0, 0, 30, 30), "over the cap"),
    ],
)
def test_region_from_bbox_errors(bounds: tuple, expected: str) -> None:
    with pytest.raises(RegionError, match=expected):
        region_from_bbox(*bounds)


# -- regressions: hostile numbers and structures ---------------------------------------------------


def test_huge_integer_in_bbox_is_a_region_error() -> None:
    with pytest.raises(RegionError, match='"bbox" must be an array of 4 or 6 numbers'):
        parse_region({**polygon(SQUARE), "bbox": [0, 0, 1, 10**400]})


def test_integer_literal_too_long_to_parse(tmp_path: Path) -> None:
    path = tmp_path / "digits.geojson"
    path.write_text('{"type": "Polygon", "coordinates": [[[0, ' + "9" * 5000 + "]]]}")
    with pytest.raises(RegionError, match="unreadable JSON number"):
        read_region(path)


def test_cyclic_dict_stops_at_the_depth_cap() -> None:
    obj: dict = {"type": "Feature", "properties": {}}
    obj["geometry"] = obj
    with pytest.raises(RegionError, match="nested more than 64 levels deep"):
        parse_region(obj)


def test_brackets_inside_strings_do_not_count_as_depth(tmp_path: Path) -> None:
    path = tmp_path / "name.geojson"
    obj = {**feature(polygon(SQUARE)), "properties": {"name": "[" * 100 + '\\"{'}}
    path.write_text(json.dumps(obj))
    assert read_region(path).area_km2 > 0
