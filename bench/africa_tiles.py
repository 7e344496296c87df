"""Count the tiles that cover Africa at S2 levels 13-15 (the figure quoted in the README).

Uses the Natural Earth 1:110m country outlines that ship with pyogrio's test fixtures (public
domain), so it needs no download. Run: .venv/bin/python bench/africa_tiles.py
"""

from __future__ import annotations

import time
from pathlib import Path

import geopandas as gpd
import pyogrio

from open_buildings.geo import grid

NATURAL_EARTH = (
    Path(pyogrio.__file__).parent / "tests/fixtures/naturalearth_lowres/naturalearth_lowres.shp"
)


def main() -> None:
    """Print the tile count for Africa at levels 13, 14 and 15, and how long each count took."""
    world = gpd.read_file(NATURAL_EARTH)
    africa = world[world["continent"] == "Africa"].union_all()
    print("level  tiles          seconds")
    for level in (13, 14, 15):
        start = time.perf_counter()
        count = grid.count_tiles(africa, grid.GridSpec(level=level))
        print(f"{level:>5}  {count:>13,}  {time.perf_counter() - start:7.1f}")


if __name__ == "__main__":
    main()
