"""``near_region``: the pixels of a tile within the margin of the region."""

from __future__ import annotations

import numpy as np
import shapely
from pyproj import Transformer

from open_buildings.geo import grid
from open_buildings.geo.region_mask import near_region


def test_pixels_near_the_region_and_only_those() -> None:
    tile = grid.tile_for_point(36.9074, -1.3053)
    g = tile.grid
    left, bottom, right, top = g.bounds
    x, y = (left + right) / 2, (bottom + top) / 2  # the tile's centre: the mask is not cut
    square = shapely.box(x - 50, y - 50, x + 50, y + 50)  # 100 m, in the tile's CRS
    to_lonlat = Transformer.from_crs(g.crs, "EPSG:4326", always_xy=True)
    region = shapely.transform(square, lambda xy: np.column_stack(to_lonlat.transform(*xy.T)))
    mask = near_region(tile, region, margin_m=32)
    col, row = ~g.transform @ (x, y)
    assert mask[int(row), int(col)]  # the region's centre
    side_px = (100 + 2 * 32) / g.pixel_size  # the square plus the margin on both sides
    assert abs(mask.sum() / side_px**2 - 1) < 0.05  # rounded corners, touched edge pixels
    assert not mask[0, 0] and not mask[-1, -1]
    far = shapely.box(10.0, 10.0, 10.1, 10.1)  # another continent
    assert not near_region(tile, far, 32).any()
    whole = shapely.box(30, -5, 40, 5)
    assert near_region(tile, whole, 32).all()
