"""The tiling grid: cores partition the earth, cover() is exact, tiles read with a margin."""

import inspect
import itertools

import numpy as np
import pytest
import shapely
from pyproj import Transformer

from open_buildings.geo import cells, grid

SPEC = grid.GridSpec(level=14, margin_m=32.0)


def _covered_ids(geometry: shapely.Geometry, spec: grid.GridSpec = SPEC) -> set[str]:
    return {tile.id for tile in grid.cover(geometry, spec)}


def _random_points(bounds: tuple[float, float, float, float], n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.uniform(bounds[0], bounds[2], n), rng.uniform(bounds[1], bounds[3], n)


@pytest.mark.parametrize(
    "region",
    [
        shapely.box(85.51, 27.62, 85.53, 27.64),  # Banepa, Nepal
        shapely.box(5.99, 0.0, 6.01, 0.02),  # across the UTM zone 31/32 border at 6°E
        shapely.box(36.80, -1.31, 36.82, -1.29).difference(
            shapely.box(36.805, -1.305, 36.815, -1.295)
        ),
    ],
    ids=["banepa", "utm-border", "with-hole"],
)
def test_cover_is_exact(region: shapely.Geometry) -> None:
    covered = _covered_ids(region)
    # Every covered core touches the region ...
    cores = [cells.cell_polygon(token, points_per_edge=32) for token in covered]
    assert shapely.intersects(cores, region.buffer(1e-9)).all()
    # ... every point of the region is owned by a covered tile ...
    lon, lat = _random_points(region.bounds, 5000)
    inside = shapely.contains_xy(region, lon, lat)
    assert set(cells.cell_tokens(lon[inside], lat[inside], SPEC.level)) <= covered
    # ... and the tiles just outside the cover do not touch it.
    ring = _covered_ids(region.buffer(0.01)) - covered
    assert ring, "the buffered region must reach beyond the cover"
    outside = [cells.cell_polygon(token, points_per_edge=32) for token in ring]
    assert not shapely.intersects(outside, region.buffer(-1e-9)).any()


def test_count_tiles_matches_cover() -> None:
    region = shapely.box(36.75, -1.35, 36.85, -1.25)
    assert grid.count_tiles(region, SPEC) == len(list(grid.cover(region, SPEC)))


def test_cover_streams() -> None:
    africa_box = shapely.box(-17.0, -35.0, 51.0, 37.0)
    tiles = grid.cover(africa_box, SPEC)
    assert inspect.isgenerator(tiles)
    first = list(itertools.islice(tiles, 5))
    assert len({tile.id for tile in first}) == 5


@pytest.mark.parametrize(
    "region",
    [
        shapely.box(5.995, 0.0, 6.005, 0.01),  # UTM zone border
        shapely.MultiPolygon(
            [shapely.box(179.995, -16.01, 180, -16), shapely.box(-180, -16.01, -179.995, -16)]
        ),
        shapely.box(0.0, 89.99, 20.0, 89.995),  # next to the north pole, inside the UPS cap
        shapely.box(-0.005, -0.005, 0.005, 0.005),  # S2 face corner at (0, 0)
    ],
    ids=["utm-border", "antimeridian", "north-pole", "face-corner"],
)
def test_cores_partition_the_region(region: shapely.Geometry) -> None:
    tiles = list(grid.cover(region, SPEC))
    lon, lat = _random_points(region.bounds, 3000, seed=1)
    keep = shapely.contains_xy(region, lon, lat)
    owners = np.sum([tile.owns(lon[keep], lat[keep]) for tile in tiles], axis=0)
    np.testing.assert_array_equal(owners, 1)


def test_tile_grid_holds_core_plus_margin() -> None:
    tile = grid.tile_for_point(85.52, 27.63, SPEC)
    g = tile.grid
    assert g.crs == "EPSG:32645"  # UTM 45N
    assert g.transform.a == 0.5 and g.transform.e == -0.5
    assert g.transform.c % 0.5 == 0 and g.transform.f % 0.5 == 0  # snapped to the 50 cm lattice
    to_utm = Transformer.from_crs("EPSG:4326", g.crs, always_xy=True)
    xy = np.column_stack(to_utm.transform(*shapely.get_coordinates(tile.core).T))
    left, bottom, right, top = g.bounds
    margin = SPEC.margin_m
    assert xy[:, 0].min() - left >= margin and right - xy[:, 0].max() >= margin
    assert xy[:, 1].min() - bottom >= margin and top - xy[:, 1].max() >= margin
    assert xy[:, 0].min() - left < margin + 0.5  # and no more than the margin plus one pixel
    # a level-14 tile is roughly 0.6 km across: about 1,100-1,500 pixels a side
    assert 1000 < g.width < 1700 and 1000 < g.height < 1700


def test_tile_ids_are_stable_and_checked() -> None:
    tile = grid.tile_for_point(36.8, -1.3, SPEC)
    assert grid.tile_from_id(tile.id, SPEC) == tile
    assert tile.owns(np.array([36.8]), np.array([-1.3])).tolist() == [True]
    with pytest.raises(ValueError, match="level-13 cell; this grid uses level 14"):
        grid.tile_from_id("10ffd034", SPEC)


@pytest.mark.parametrize(
    ("lon", "lat", "crs"),
    [
        (36.8, -1.3, "EPSG:32737"),
        (5.999, 10.0, "EPSG:32631"),
        (6.0, 10.0, "EPSG:32632"),
        (180.0, 0.0, "EPSG:32660"),
        (-180.0, 0.0, "EPSG:32601"),
        (0.0, 85.0, "EPSG:32661"),
        (0.0, -81.0, "EPSG:32761"),
    ],
)
def test_utm_crs(lon: float, lat: float, crs: str) -> None:
    assert grid.utm_crs(lon, lat) == crs


def test_bad_spec_and_bad_geometry() -> None:
    with pytest.raises(ValueError, match="tile level"):
        grid.GridSpec(level=0)
    with pytest.raises(ValueError, match="Polygon or MultiPolygon"):
        list(grid.cover(shapely.Point(0, 0)))
