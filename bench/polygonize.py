"""Post-processing throughput on real model outputs: ``python -m bench.polygonize``.

The shipped default model runs on the Nairobi sample imagery (the two tiles of the sample
region, as ``ob-infer`` reads them); its logits are what both sides post-process:

* **ours**: ``models.heads.decode`` (logits -> instance labels) then ``geo.polygonize`` (one
  ``rasterio.features.shapes`` call per tile, then shapely 2 and pyproj on whole arrays);
* **baseline**: the same decode, then the straightforward per-instance loop: one
  ``rasterio.features.shapes`` call per instance, shapely ``simplify`` and a pyproj transform
  per polygon.

Decode is the same code on both sides, so the table gives decode + polygonize (what the issue
asks for) and polygonize alone. Both sides produce simplified lon/lat polygons with areas; the
figure that matters is the ratio, measured in the same run.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio.features
import shapely
from affine import Affine
from pyproj import Transformer
from shapely.geometry import shape

from bench.common import LABELS, SAMPLE, THREADS, interleaved
from open_buildings.geo import grid, polygonize


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
    """One ``rasterio.features.shapes`` call per instance, then shapely and pyproj per polygon.

    Each call sees only the instance's bounding box (``scipy.ndimage.find_objects``), as a
    sensible straightforward implementation would; masking the whole tile per instance instead
    makes the baseline quadratic and the ratio meaningless.
    """
    from scipy import ndimage as ndi

    to_lonlat = Transformer.from_crs(g.crs, "EPSG:4326", always_xy=True)
    out = []
    for index, box in enumerate(ndi.find_objects(labels)):
        if box is None:
            continue
        value = index + 1
        mask = labels[box] == value
        window = g.transform * Affine.translation(box[1].start, box[0].start)
        for geom, _ in rasterio.features.shapes(mask.astype("uint8"), mask=mask, transform=window):
            polygon = shape(geom).simplify(simplify_m)
            area = polygon.area
            coords = np.asarray(polygon.exterior.coords)
            lon, lat = to_lonlat.transform(coords[:, 0], coords[:, 1])
            out.append((value, shapely.Polygon(np.column_stack([lon, lat])), area))
    return out


def model_outputs() -> list[tuple[np.ndarray, grid.PixelGrid]]:
    """The default model's logits on each sample tile with imagery, and the tile's grid."""
    from bench.models import load_default
    from open_buildings.geo import imagery, regions
    from open_buildings.pipelines import runtime
    from open_buildings.pipelines.runtime import prepare_model

    model, _ = prepare_model(load_default(), "cpu")
    source = imagery.open_imagery(str(SAMPLE / "items.json"))
    region = regions.read_region(SAMPLE / "region.geojson").geometry
    out = []
    for tile in grid.cover(region):
        image = source.read(tile.grid)
        if not image.empty:
            out.append((runtime.run_model(model, [image.rgb])[0], tile.grid))
    return out


def run(repeats: int = 3, outputs: list[tuple[np.ndarray, Any]] | None = None) -> dict[str, Any]:
    """Instances per second for ours and the baseline on real outputs, and their ratios.

    Args:
        repeats: timed rounds (best of, interleaved).
        outputs: ``(logits, grid)`` per tile; None runs the default model on the sample.

    Returns:
        ``instances``, ``tiles``, ``tile_px``, and for ``decode``, ``ours``, ``baseline``
        (polygonize only) their best wall and CPU seconds; ``speedup`` (decode + polygonize)
        and ``speedup_polygonize`` (polygonize alone), both in CPU seconds.
    """
    from open_buildings.models import heads

    outputs = outputs if outputs is not None else model_outputs()
    decoded = [(heads.decode(logits)[0], g) for logits, g in outputs]
    n = sum(int(labels.max()) for labels, _ in decoded)

    def decode_all() -> None:
        for logits, _ in outputs:
            heads.decode(logits)

    def each(fn: Callable[[np.ndarray, grid.PixelGrid], object]) -> Callable[[], None]:
        return lambda: [fn(labels, g) for labels, g in decoded]

    t = interleaved(
        {
            "decode": decode_all,
            "ours": each(lambda lab, g: polygonize.polygonize(lab, g.transform, g.crs)),
            "baseline": each(lambda lab, g: baseline(lab, g, polygonize.DEFAULT_SIMPLIFY_M)),
        },
        repeats,
        warmup=0,
    )
    ours, base, dec = t["ours"], t["baseline"], t["decode"]
    return {
        "instances": n,
        "tiles": len(outputs),
        "tile_px": ", ".join(f"{g.width}x{g.height}" for _, g in outputs),
        "decode": dec,
        "ours": ours,
        "baseline": base,
        "ours_inst_per_s": n / (dec.cpu + ours.cpu),
        "baseline_inst_per_s": n / (dec.cpu + base.cpu),
        "speedup": (dec.cpu + base.cpu) / (dec.cpu + ours.cpu),
        "speedup_polygonize": base.cpu / ours.cpu,
    }


def main(argv: list[str] | None = None) -> None:
    """Print the measurement."""
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    r = run(args.repeats)
    print(
        f"{r['instances']} instances from the default model on {r['tiles']} sample tiles "
        f"({r['tile_px']}); CPU seconds, best of {args.repeats}:"
    )
    print(
        f"  decode {r['decode'].cpu:.3f} s; polygonize: ours {r['ours'].cpu:.3f} s, baseline "
        f"{r['baseline'].cpu:.3f} s ({r['speedup_polygonize']:.1f}x)"
    )
    print(
        f"  decode + polygonize: ours {r['ours_inst_per_s']:,.0f} instances/s, baseline "
        f"{r['baseline_inst_per_s']:,.0f} instances/s ({r['speedup']:.1f}x)"
    )


if __name__ == "__main__":
    main()
