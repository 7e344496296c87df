"""Which pixels of a tile lie near the region: where the model and post-processing need to look.

With the output clipped to the region (the default), a building counts only if its centroid lies
inside the region, so pixels farther than the tile margin from the region can hold no part of a
building that is written (the same bound as the tile margin itself). Masking them out lets the
model run on the region's part of a tile only (``pipelines.forward.run_on_imagery``): a region
that cuts through its border tiles stops paying for their outer parts.
"""

from __future__ import annotations

import numpy as np
import rasterio.features
import shapely
from pyproj import Transformer

from open_buildings.geo.grid import Tile


def near_region(tile: Tile, region: shapely.Geometry, margin_m: float) -> np.ndarray:
    """Return bool ``(H, W)`` on ``tile.grid``: True within ``margin_m`` of ``region``.

    Args:
        tile: the tile.
        region: the region in lon/lat (prepared or not).
        margin_m: how far outside the region pixels are kept, in metres.

    Returns:
        The mask; all True where the answer is not cheap and certain (a tile whose core is split
        at the antimeridian).
    """
    g = tile.grid
    west, south, east, north = tile.core.bounds
    if east - west > 180:  # a core split at the antimeridian
        return np.ones((g.height, g.width), dtype=bool)
    pad = 0.01  # degrees: far more than the grid's margin beyond the core (32 m)
    part = shapely.clip_by_rect(region, west - pad, south - pad, east + pad, north + pad)
    if shapely.is_empty(part):
        return np.zeros((g.height, g.width), dtype=bool)
    to_local = Transformer.from_crs("EPSG:4326", g.crs, always_xy=True)
    local = shapely.transform(
        part, lambda xy: np.column_stack(to_local.transform(xy[:, 0], xy[:, 1]))
    )
    near = shapely.buffer(local, margin_m, quad_segs=4)
    return rasterio.features.geometry_mask(
        [near], out_shape=(g.height, g.width), transform=g.transform, invert=True, all_touched=True
    )
