"""Post-processing throughput: ``geo.polygonize`` against the straightforward per-instance baseline.

The labels are the 180 real OSM buildings of the Nairobi sample, rasterized as instances on the
50 cm grid of the tile that holds them. Both sides produce simplified lon/lat polygons with areas;
the figure that matters is the ratio, measured in the same run.
"""

from __future__ import annotations

import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio.features
import shapely
from pyproj import Transformer
from shapely.geometry import shape

from open_buildings.geo import grid, polygonize

LABELS = Path(__file__).resolve().parents[1] / "tests/data/labels/nairobi_ke.geojson"


def instance_raster() -> tuple[np.ndarray, grid.PixelGrid]:
    """Rasterize the Nairobi OSM buildings (ids 1..N) onto the 50 cm grid of their tile."""
    buildings = gpd.read_file(LABELS)
    center = buildings.union_all().centroid
    tile = grid.tile_for_point(center.x, center.y)
    g = tile.grid
    local = buildings.to_crs(g.crs).geometry.values
    labels = rasterio.features.rasterize(
        zip(local, range(1, len(local) + 1)),
        out_shape=(g.height, g.width),
        transform=g.transform,
        dtype="int32",
    )
    return labels, g


def baseline(labels: np.ndarray, g: grid.PixelGrid, simplify_m: float) -> list[tuple]:
    """One ``rasterio.features.shapes`` call per instance, then shapely and pyproj per polygon."""
    to_lonlat = Transformer.from_crs(g.crs, "EPSG:4326", always_xy=True)
    out = []
    for value in np.unique(labels[labels > 0]):
        mask = labels == value
        for geom, _ in rasterio.features.shapes(
            mask.astype("uint8"), mask=mask, transform=g.transform
        ):
            polygon = shape(geom).simplify(simplify_m)
            area = polygon.area
            coords = np.asarray(polygon.exterior.coords)
            lon, lat = to_lonlat.transform(coords[:, 0], coords[:, 1])
            out.append((value, shapely.Polygon(np.column_stack([lon, lat])), area))
    return out


def run(repeats: int = 3) -> dict[str, float]:
    """Return instances per second for ours and the baseline, and their ratio."""
    labels, g = instance_raster()
    n = int(labels.max())
    timings = {}
    for name, fn in {
        "ours": lambda: polygonize.polygonize(labels, g.transform, g.crs),
        "baseline": lambda: baseline(labels, g, polygonize.DEFAULT_SIMPLIFY_M),
    }.items():
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        timings[name] = best
    return {
        "instances": n,
        "tile_px": f"{g.width}x{g.height}",
        "ours_inst_per_s": n / timings["ours"],
        "baseline_inst_per_s": n / timings["baseline"],
        "speedup": timings["baseline"] / timings["ours"],
    }
