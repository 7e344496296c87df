"""S2 tokens and Plus Codes, checked against independent implementations and a published row."""

import numpy as np
import pytest
import s2sphere
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from open_buildings.geo import cells

LON = st.floats(-180, 180, allow_nan=False)
LAT = st.floats(-90, 90, allow_nan=False)


def test_plus_code_matches_published_open_buildings_row() -> None:
    # From a published Open Buildings v3 row: 10.26189342,11.20633394,...,7F2H7664+QG4P
    assert cells.plus_codes([10.26189342], [11.20633394]).tolist() == ["7F2H7664+QG4P"]


def test_plus_code_length_is_configurable() -> None:
    assert cells.plus_codes([10.26189342], [11.20633394], length=10).tolist() == ["7F2H7664+QG"]


@settings(max_examples=200, deadline=None)
@given(lon=LON, lat=LAT, level=st.integers(0, 30))
def test_cell_token_agrees_with_s2sphere(lon: float, lat: float, level: int) -> None:
    expected = s2sphere.CellId.from_lat_lng(s2sphere.LatLng.from_degrees(lat, lon)).parent(level)
    assert cells.cell_token(lon, lat, level) == expected.to_token()
    assert cells.cell_ids([lon], [lat], level)[0] == np.uint64(expected.id())


def test_token_level_and_bad_token() -> None:
    assert cells.token_level("10ffd034") == 13
    with pytest.raises(ValueError, match="not a valid S2 cell token"):
        cells.token_level("zz-not-a-token")


def test_mismatched_lengths_raise() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        cells.cell_ids([1.0, 2.0], [1.0])


def test_cell_polygon_contains_its_points_and_not_its_neighbours() -> None:
    rng = np.random.default_rng(0)
    lon, lat = rng.uniform(85.50, 85.54, 500), rng.uniform(27.60, 27.64, 500)
    tokens = cells.cell_tokens(lon, lat, 14)
    token = tokens[0]
    polygon = cells.cell_polygon(token, points_per_edge=32)
    inside = shapely.contains_xy(polygon, lon, lat)
    # Points strictly inside or outside the densified outline agree with S2's own answer; the
    # densified chord differs from the geodesic edge by far less than the points' spacing.
    np.testing.assert_array_equal(inside, tokens == token)


@pytest.mark.parametrize(("lon", "expect_maxx"), [(179.99, 180.0), (-179.99, None)])
def test_cell_polygon_on_the_antimeridian_stays_within_180(lon: float, expect_maxx) -> None:
    # S2 grid lines run along the 180° meridian, so these cells have an edge on it; a naive
    # conversion gives a vertex at -180 and a ring 359° wide.
    polygon = cells.cell_polygon(cells.cell_token(lon, -20.0, 10))
    assert polygon.geom_type == "Polygon" and polygon.is_valid
    minx, _, maxx, _ = polygon.bounds
    assert maxx - minx < 0.2
    if expect_maxx is not None:
        assert maxx == expect_maxx
    else:
        assert minx == -180.0
