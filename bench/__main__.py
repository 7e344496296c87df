"""Run the benchmarks and print one table: ``python -m bench`` (``make bench``)."""

from __future__ import annotations

import platform
import time

import shapely

from bench import polygonize
from open_buildings.geo import grid


def tiles_per_second() -> float:
    """Tiles per second that ``grid.cover`` yields (with their core and pixel grid) over 100 km2."""
    region = shapely.box(36.75, -1.35, 36.84, -1.26)
    start = time.perf_counter()
    count = 0
    for tile in grid.cover(region):
        _ = tile.grid
        count += 1
    return count / (time.perf_counter() - start)


def main() -> None:
    """Print each measurement with its ratio; every figure comes from this one run."""
    print(
        f"machine: {platform.machine()} {platform.processor()} python {platform.python_version()}"
    )
    poly = polygonize.run()
    print("| measurement | value | ratio |")
    print("|---|---|---|")
    print(
        f"| post-processing, {poly['instances']} real instances on a {poly['tile_px']} tile | "
        f"{poly['ours_inst_per_s']:,.0f} inst/s (baseline {poly['baseline_inst_per_s']:,.0f}) | "
        f"{poly['speedup']:.1f}x the per-instance baseline |"
    )
    print(f"| tiling: tiles with pixel grids, 100 km2 | {tiles_per_second():,.0f} tiles/s | - |")


if __name__ == "__main__":
    main()
