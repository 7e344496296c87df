"""Draw a model's Nairobi footprints (yellow) and the OSM labels (cyan) over the imagery.

    .venv/bin/python pipelines/eval/draw_nairobi.py FOOTPRINTS_DIR OUT.png [DATA_ROOT]

FOOTPRINTS_DIR is what pipelines/eval/nairobi.sh wrote (OUT_DIR/footprints).
"""

from __future__ import annotations

import sys
from pathlib import Path

import geopandas as gpd

from open_buildings.evaluation.overlay import plot_footprints
from open_buildings.geo import grid, imagery
from open_buildings.geo.shard_read import read_footprints

TILE = "182f13ab"  # the Nairobi tile with the most imagery (the 4x4 block of z19 tiles)


def main(argv: list[str]) -> int:
    """Draw the figure; return the exit status."""
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    pred_dir, out = Path(argv[0]), Path(argv[1])
    data = Path(argv[2]) if len(argv) == 3 else Path("../shared/data")
    tile = grid.tile_from_id(TILE)
    image = imagery.open_imagery(data / "xyz_tiles/nairobi_ke").read(tile.grid)
    predictions = read_footprints(pred_dir)
    truth = gpd.read_file(data / "xyz_tiles/nairobi_ke/labels.geojson")
    plot_footprints(
        image.rgb,
        image.valid,
        tile.grid,
        out,
        predictions=predictions,
        truth=truth,
        title=f"Nairobi (held out): default model (yellow, {len(predictions)} in the run) "
        "vs OSM labels (cyan)",
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
