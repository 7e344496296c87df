"""Training on a fraction of the labels: only some S2 cells of the training tiles keep theirs.

The label-fraction experiments (Neumann et al.'s "in-domain representations help most with few
labels") need less labelled data that is still real: a fixed, seeded share of the level-16 cells
(about 150 m) inside the training tiles keep their loss weight; the rest of each tile is imagery
without labels, seen only as context (its pixels leave the tile's ``core``, so no chip is centred
on them and they carry no loss). The choice does not change with the run's seed, so the seeds of
one fraction train on the same labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import geopandas as gpd
import numpy as np
import shapely

from open_buildings.geo import cells as cells_of
from open_buildings.geo import grid as geogrid
from open_buildings.training.scenes import Scene, burn_shapes

CELL_LEVEL = 16
SPLIT_SEED = 0


def keep_fraction(scenes: Sequence[Scene], fraction: float, *, level: int = CELL_LEVEL) -> int:
    """Shrink each scene's ``core`` to the chosen cells; return how many cells were kept.

    Cells are the level-``level`` S2 cells that meet any scene's core, taken in a seeded random
    order until ``fraction`` of them (at least one) are chosen.
    """
    spec = geogrid.GridSpec(level=level)
    cells: dict[str, shapely.Geometry] = {}
    for scene in scenes:
        level_here = geogrid.GridSpec(level=cells_of.token_level(scene.tile_id))
        outline = geogrid.tile_from_id(scene.tile_id, level_here).core
        for tile in geogrid.cover(outline, spec):
            cells[tile.id] = tile.core
    order = sorted(cells)
    rng = np.random.default_rng(SPLIT_SEED)
    chosen = [order[i] for i in rng.permutation(len(order))[: max(1, round(fraction * len(order)))]]
    keep = gpd.GeoSeries([cells[c] for c in chosen], crs="EPSG:4326")
    for scene in scenes:
        mask = burn_shapes(keep.to_crs(scene.grid.crs).values, scene.grid)
        scene.core = scene.core & mask
    return len(chosen)
