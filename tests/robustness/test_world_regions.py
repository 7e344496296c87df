"""World-sized and polar regions are measured and tiled right, or refused (issue #14 item 1).

Before: ``[-180, -90, 180, 90]`` measured about 0 km2 and slipped past the area cap, a box to
+-89.9 degrees was covered by its two polar caps only, and a box from -179.99 to 179.99 became a
sliver at the antimeridian without a word.
"""

from __future__ import annotations

import math
import warnings

import pytest
import shapely
from pyproj import Geod

from open_buildings.errors import RegionError
from open_buildings.geo import cells
from open_buildings.geo.grid import GridSpec, count_tiles, cover
from open_buildings.geo.regions import parse_region, region_from_bbox

EARTH_KM2 = 510_065_621.7  # the WGS84 ellipsoid's surface
NO_CAP = 1e12


def box(west: float, south: float, east: float, north: float) -> dict:
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {"type": "Polygon", "coordinates": [ring]}


@pytest.mark.parametrize("make", [lambda: region_from_bbox(-180, -90, 180, 90),
                                  lambda: parse_region(box(-180, -90, 180, 90))])  # fmt: skip
def test_the_whole_world_is_refused_by_the_area_cap(make) -> None:
    with pytest.raises(RegionError, match=r"area is 510,06\d,\d{3} km2, over the cap"):
        make()


@pytest.mark.parametrize(
    ("bounds", "expected_km2"),
    [
        ((-180, -90, 180, 90), EARTH_KM2),
        ((-180, -89.9, 180, 89.9), EARTH_KM2 * 0.99999),  # within 0.001% of the whole
        ((0, 0, 180, 90), EARTH_KM2 / 4),
        ((-180, 0, 180, 90), EARTH_KM2 / 2),
    ],
)
def test_large_boxes_have_their_area(bounds, expected_km2: float) -> None:
    region = parse_region(box(*bounds), max_area_km2=NO_CAP)
    assert region.area_km2 == pytest.approx(expected_km2, rel=2e-5)


def test_a_small_region_keeps_its_geodesic_area() -> None:
    region = region_from_bbox(36.90, -1.31, 36.91, -1.30)
    geodesic = abs(
        Geod(ellps="WGS84").geometry_area_perimeter(shapely.box(36.90, -1.31, 36.91, -1.30))[0]
    )
    assert region.area_km2 == pytest.approx(geodesic / 1e6, rel=1e-6)


def test_a_box_to_89_9_degrees_is_covered_whole_not_by_its_polar_caps() -> None:
    region = region_from_bbox(-180, -89.9, 180, 89.9, max_area_km2=NO_CAP)
    assert count_tiles(region.geometry, GridSpec(level=3)) == 6 * 4**3  # every level-3 cell
    equator = cells.cell_token(10.0, 0.5, 3)
    assert equator in {t.id for t in cover(region.geometry, GridSpec(level=3))}


def test_a_polar_cap_under_the_cap_is_covered_around_the_pole() -> None:
    region = region_from_bbox(-180, 85, 180, 90)  # 979,000 km2: just under the default cap
    assert region.area_km2 == pytest.approx(979_155, rel=1e-3)
    tiles = list(cover(region.geometry, GridSpec(level=6)))
    lats = [cells.cell_polygon(t.id).centroid.y for t in tiles]
    assert min(lats) > 84 and max(lats) > 89
    # The cells' total area is the cap's plus a ring of boundary cells, never a hemisphere.
    cell_km2 = EARTH_KM2 / (6 * 4**6)
    assert region.area_km2 / cell_km2 <= len(tiles) <= 2 * region.area_km2 / cell_km2


def test_a_ring_that_jumps_across_the_antimeridian_is_never_read_silently() -> None:
    with pytest.warns(UserWarning, match=r"read as crossing the antimeridian .*split it at 0"):
        region = parse_region(box(-179.99, -1, 179.99, 1), max_area_km2=NO_CAP)
    assert region.area_km2 < 1_000  # the short way, as the warning says
    # Written continuously, the crossing is unambiguous: no warning.
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        continuous = parse_region(box(179.99, -1, 180.01, 1))
    assert not record
    assert math.isclose(continuous.area_km2, region.area_km2, rel_tol=1e-6)
    # The long way round, as the warning advises: two polygons split at 0 degrees.
    west, east = box(-179.99, -1, 0, 1), box(0, -1, 179.99, 1)
    halves = {"type": "MultiPolygon", "coordinates": [west["coordinates"], east["coordinates"]]}
    with pytest.raises(RegionError, match="over the cap"):
        parse_region(halves)
