"""Tests for open_buildings.geo.polygonize: exact rings on hand-made masks, as rasterio's
tests/test_features.py does, plus area, validity and scale checks."""

from __future__ import annotations

import numpy as np
import pyproj
import pytest
import shapely
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from open_buildings.geo.polygonize import OUTPUT_COLUMNS, _polygons_metric, polygonize

CRS = "EPSG:32737"  # UTM 37S: Tanzania / Kenya coast
X0, Y0 = 500_000.0, 9_000_000.0  # on the zone's central meridian (39 E), about 9 S
GRID = Affine(0.5, 0.0, X0, 0.0, -0.5, Y0)  # 50 cm pixels, north up
TO_LONLAT = pyproj.Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)


def corner(col: float, row: float) -> tuple[float, float]:
    """Metric coordinates of a pixel corner (col, row) on GRID."""
    x, y = GRID.c + GRID.a * col + GRID.b * row, GRID.f + GRID.d * col + GRID.e * row
    return (x, y)


def rings(polygon: shapely.Polygon) -> list[list[tuple[float, float]]]:
    return [list(polygon.exterior.coords)] + [list(r.coords) for r in polygon.interiors]


def metric(labels: np.ndarray, simplify_m: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    return _polygons_metric(labels, GRID, simplify_m=simplify_m)


def test_square_ring_is_exact() -> None:
    labels = np.zeros((4, 4), dtype=np.uint8)
    labels[1:3, 1:3] = 1
    ids, polygons = metric(labels)
    assert ids.tolist() == [1]
    # Counter-clockwise exterior (RFC 7946), starting where GDAL starts.
    expected = [corner(1, 1), corner(1, 3), corner(3, 3), corner(3, 1), corner(1, 1)]
    assert expected[0] == (500_000.5, 8_999_999.5)
    assert rings(polygons[0]) == [expected]
    # The default simplification leaves a 1 m square alone.
    assert rings(metric(labels, simplify_m=0.5)[1][0]) == [expected]


def test_square_in_lonlat_matches_pyproj() -> None:
    labels = np.zeros((4, 4), dtype=np.int32)
    labels[1:3, 1:3] = 7
    frame = polygonize(labels, GRID, CRS, min_area_m2=0.0)
    assert frame["instance_id"].tolist() == [7]
    xy = np.array([corner(1, 1), corner(1, 3), corner(3, 3), corner(3, 1), corner(1, 1)])
    lon, lat = TO_LONLAT.transform(xy[:, 0], xy[:, 1])
    got = np.asarray(frame.geometry.iloc[0].exterior.coords)
    np.testing.assert_array_equal(got, np.column_stack([lon, lat]))
    assert frame.geometry.iloc[0].exterior.is_ccw
    # The centroid is the square's centre, reprojected.
    c_lon, c_lat = TO_LONLAT.transform(*corner(2, 2))
    assert frame["longitude"].iloc[0] == pytest.approx(c_lon, abs=1e-12)
    assert frame["latitude"].iloc[0] == pytest.approx(c_lat, abs=1e-12)
    assert frame["area_in_meters"].iloc[0] == pytest.approx(1.0, rel=1e-3)


def test_l_shape_keeps_its_six_corners() -> None:
    labels = np.zeros((6, 6), dtype=np.int16)
    labels[1:5, 1:3] = 1  # vertical arm, 4 x 2 pixels
    labels[3:5, 3:5] = 1  # foot, 2 x 2 pixels
    expected = [
        corner(1, 1),
        corner(1, 5),
        corner(5, 5),
        corner(5, 3),
        corner(3, 3),
        corner(3, 1),
        corner(1, 1),
    ]
    ids, polygons = metric(labels)
    assert rings(polygons[0]) == [expected]
    assert polygons[0].area == 12 * 0.25


def test_l_shape_survives_default_simplification() -> None:
    # A 4 m x 4 m L with 2 m arms: its inner corner lies well over one pixel off any chord.
    labels = np.zeros((10, 10), dtype=np.int32)
    labels[1:9, 1:5] = 1
    labels[5:9, 5:9] = 1
    expected = [
        corner(1, 1),
        corner(1, 9),
        corner(9, 9),
        corner(9, 5),
        corner(5, 5),
        corner(5, 1),
        corner(1, 1),
    ]
    assert rings(metric(labels, simplify_m=0.5)[1][0]) == [expected]
    frame = polygonize(labels, GRID, CRS)
    assert shapely.get_num_coordinates(frame.geometry.iloc[0]) == 7


def test_simplification_smooths_a_tiny_l() -> None:
    # The documented cost of a one-pixel tolerance: a 1 m notch in a 2.5 m building goes.
    labels = np.zeros((6, 6), dtype=np.int16)
    labels[1:5, 1:3] = 1
    labels[3:5, 3:5] = 1
    simple = metric(labels, simplify_m=0.5)[1][0]
    assert shapely.get_num_coordinates(simple) == 5
    assert simple.is_valid


def test_hole_stays_a_hole() -> None:
    labels = np.zeros((7, 7), dtype=np.int32)
    labels[1:6, 1:6] = 3
    labels[3, 3] = 0  # a one-pixel courtyard
    ids, polygons = metric(labels)
    assert ids.tolist() == [3]
    exterior, hole = rings(polygons[0])
    assert exterior == [corner(1, 1), corner(1, 6), corner(6, 6), corner(6, 1), corner(1, 1)]
    assert hole == [corner(3, 3), corner(4, 3), corner(4, 4), corner(3, 4), corner(3, 3)]
    assert not shapely.LinearRing(hole).is_ccw  # holes run clockwise
    assert polygons[0].area == (25 - 1) * 0.25
    assert polygons[0].is_valid


def test_diagonal_pixels_give_one_valid_polygon() -> None:
    # Two pixels of one instance touching only at a corner: 8-connectivity would make a ring that
    # touches itself. The rule: keep the largest 4-connected part.
    labels = np.zeros((4, 4), dtype=np.int32)
    labels[1, 1] = 1
    labels[2, 2] = 1
    ids, polygons = metric(labels)
    assert ids.tolist() == [1]
    assert polygons[0].geom_type == "Polygon" and polygons[0].is_valid
    assert rings(polygons[0]) == [
        [corner(1, 1), corner(1, 2), corner(2, 2), corner(2, 1), corner(1, 1)]
    ]

    labels[2:4, 2:4] = 1  # now the lower-right part is a 2 x 2 block: it wins
    labels[2, 2] = 1
    ids, polygons = metric(labels)
    assert rings(polygons[0]) == [
        [corner(2, 2), corner(2, 4), corner(4, 4), corner(4, 2), corner(2, 2)]
    ]
    frame = polygonize(labels, GRID, CRS, min_area_m2=0.0)
    assert len(frame) == 1 and frame.geometry.is_valid.all()


def test_touching_instances_share_an_edge() -> None:
    labels = np.array([[1, 1, 2, 2], [1, 1, 2, 2]], dtype=np.int32)
    ids, polygons = metric(labels)
    assert ids.tolist() == [1, 2]
    shared = shapely.intersection(polygons[0], polygons[1])
    assert shapely.equals(shared, shapely.LineString([corner(2, 0), corner(2, 2)]))
    assert rings(polygons[1]) == [
        [corner(2, 0), corner(2, 2), corner(4, 2), corner(4, 0), corner(2, 0)]
    ]


def test_empty_labels_give_an_empty_frame() -> None:
    frame = polygonize(np.zeros((8, 8), dtype=np.int32), GRID, CRS)
    assert list(frame.columns) == OUTPUT_COLUMNS
    assert len(frame) == 0
    assert frame.crs.to_epsg() == 4326
    assert frame["instance_id"].dtype == np.int64
    for column in ("latitude", "longitude", "area_in_meters", "confidence"):
        assert frame[column].dtype == np.float64
    assert frame.geometry.name == "geometry"


def test_min_area_drops_small_instances() -> None:
    labels = np.zeros((10, 10), dtype=np.int32)
    labels[0, 0] = 1  # 0.25 m2
    labels[4:8, 4:8] = 2  # 4 m2
    assert polygonize(labels, GRID, CRS, min_area_m2=1.0)["instance_id"].tolist() == [2]
    assert polygonize(labels, GRID, CRS, min_area_m2=0.0)["instance_id"].tolist() == [1, 2]
    assert polygonize(labels, GRID, CRS, min_area_m2=5.0).empty


def test_simplification_removes_the_staircase_and_stays_valid() -> None:
    size = 12
    labels = np.zeros((size + 2, size + 2), dtype=np.int32)
    for i in range(size):  # a right triangle whose hypotenuse is a one-pixel staircase
        labels[1 + i, 1 : 2 + i] = 1
    raw = metric(labels, simplify_m=0.0)[1][0]
    simple = metric(labels, simplify_m=0.5)[1][0]
    assert shapely.get_num_coordinates(raw) == 2 * size + 3
    assert shapely.get_num_coordinates(simple) <= 5
    assert simple.is_valid and simple.geom_type == "Polygon"
    assert simple.area == pytest.approx(raw.area, rel=0.05)
    assert shapely.hausdorff_distance(raw, simple) <= 0.5 + 1e-9


def test_area_is_ground_area_even_far_from_the_central_meridian() -> None:
    # 300 km west of the central meridian UTM's scale factor is ~1.0007, so projected area is
    # 0.14 % too large; the areal-scale correction must bring it to the geodesic area.
    grid = Affine(0.5, 0.0, 200_000.0, 0.0, -0.5, 8_500_000.0)
    labels = np.zeros((60, 60), dtype=np.int32)
    labels[5:45, 10:50] = 1  # 20 m x 20 m
    labels[30:55, 20:30] = 2
    frame = polygonize(labels, grid, CRS)
    geod = pyproj.Geod(ellps="WGS84")
    for polygon, area in zip(frame.geometry, frame["area_in_meters"]):
        geodesic = abs(geod.geometry_area_perimeter(polygon)[0])
        assert area == pytest.approx(geodesic, rel=1e-4)
        assert abs(area - geodesic) / geodesic < 1e-5  # in fact much closer
    projected = metric(labels)[1][0].area
    assert abs(projected - frame["area_in_meters"].iloc[0]) / projected > 1e-3


def test_confidence_is_indexed_by_label() -> None:
    labels = np.zeros((10, 10), dtype=np.int32)
    labels[0:4, 0:4] = 2
    labels[6:10, 6:10] = 5
    scores = np.array([0.0, 0.1, 0.9, 0.2, 0.3, 0.6])
    frame = polygonize(labels, GRID, CRS, confidence=scores)
    assert frame["instance_id"].tolist() == [2, 5]
    assert frame["confidence"].tolist() == [0.9, 0.6]
    assert polygonize(labels, GRID, CRS)["confidence"].isna().all()
    with pytest.raises(ValueError, match="longer than the largest label"):
        polygonize(labels, GRID, CRS, confidence=scores[:5])


@pytest.mark.parametrize(
    ("labels", "crs", "match"),
    [
        (np.zeros((2, 2, 2), dtype=np.int32), CRS, "2-D"),
        (np.zeros((2, 2), dtype=np.float32), CRS, "integer"),
        (np.full((2, 2), -1, dtype=np.int32), CRS, "0.."),
        (np.zeros((2, 2), dtype=np.int32), "EPSG:4326", "projected CRS in metres"),
    ],
)
def test_bad_inputs_are_rejected(labels: np.ndarray, crs: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        polygonize(labels, GRID, crs)


def test_real_sized_tile() -> None:
    rng = np.random.default_rng(0)
    labels = np.zeros((512, 512), dtype=np.int32)
    for label in range(1, 101):
        h, w = rng.integers(3, 40, size=2)
        r, c = rng.integers(0, 512 - 40, size=2)
        labels[r : r + h, c : c + w] = label  # later rectangles may cut or hide earlier ones
    present = np.unique(labels[labels > 0])
    frame = polygonize(labels, GRID, CRS, confidence=np.linspace(0, 1, 101), min_area_m2=0.0)
    assert len(frame) == present.size
    assert frame["instance_id"].tolist() == present.tolist()
    assert frame.geometry.is_valid.all()
    assert (frame.geom_type == "Polygon").all()
    assert (frame.geometry.exterior.apply(lambda ring: ring.is_ccw)).all()


@settings(max_examples=60, deadline=None)
@given(arrays(np.int32, (8, 8), elements=st.integers(0, 3)))
def test_any_mask_gives_one_valid_polygon_per_instance(labels: np.ndarray) -> None:
    ids, polygons = metric(labels, simplify_m=0.5)
    assert ids.tolist() == np.unique(labels[labels > 0]).tolist()
    assert shapely.is_valid(polygons).all()
    assert (shapely.get_type_id(polygons) == 3).all()
