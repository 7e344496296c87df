"""Regions of many parts (issue #14 item 8): the fast paths give exactly what the plain ones did.

Speed is shown by ``python -m bench.large_regions REV`` (bench/README.md), never by a timed test;
these tests hold the batched S2 covering and the component-wise union to the results of the
single S2Polygon and of ``shapely.union_all``.
"""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from open_buildings.geo import grid
from open_buildings.geo.region_geometry import union
from open_buildings.geo.regions import parse_region


def _squares(n: int, seed: int, size: float = 2e-4) -> list[shapely.Polygon]:
    rng = np.random.default_rng(seed)
    xs, ys = 36.80 + rng.uniform(0, 0.02, n), -1.40 + rng.uniform(0, 0.02, n)
    return list(shapely.box(xs, ys, xs + size, ys + size))  # many overlap and touch


@pytest.mark.parametrize("seed", [0, 1])
def test_the_component_union_equals_union_all(seed: int) -> None:
    squares = _squares(3000, seed)
    fast, plain = union(squares), shapely.union_all(squares)
    assert fast.is_valid and shapely.equals(fast, plain)
    assert len(shapely.get_parts(fast)) == len(shapely.get_parts(plain))


@pytest.mark.parametrize("level", [14, 16])
def test_the_batched_cover_equals_one_s2_polygon(level: int, monkeypatch) -> None:
    geometry = union(_squares(1500, 2))
    assert len(shapely.get_parts(geometry)) > grid._BATCH_PARTS
    spec = grid.GridSpec(level=level)
    batched = [t.id for t in grid.cover(geometry, spec)]
    count = grid.count_tiles(geometry, spec)
    monkeypatch.setattr(grid, "_BATCH_PARTS", 10**9)  # one S2Polygon, as before
    whole = [t.id for t in grid.cover(geometry, spec)]
    assert batched == whole and count == len(whole) == grid.count_tiles(geometry, spec)


def test_a_feature_collection_of_many_squares_reads_as_their_union() -> None:
    squares = _squares(2000, 3)
    collection = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": {}, "geometry": shapely.geometry.mapping(s)}
            for s in squares
        ],
    }
    region = parse_region(collection)
    assert shapely.equals(region.geometry, shapely.union_all(squares))
