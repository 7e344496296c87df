"""Write the labels whose centroid lies outside a test block (run.sh's PROTOCOL=area):
    .venv/bin/python pipelines/finetune/outside_block.py LABELS BLOCK.geojson OUT.geojson
"""

import sys

import shapely

from open_buildings.geo.regions import read_region
from open_buildings.training.scenes import read_labels


def main(labels: str, block: str, out: str) -> None:
    """Write ``labels`` minus the buildings of ``block`` to ``out`` (GeoJSON, lon/lat)."""
    frame = read_labels(labels)
    points = shapely.centroid(frame.geometry.values)
    inside = shapely.intersects_xy(
        read_region(block).geometry, shapely.get_x(points), shapely.get_y(points)
    )
    frame[~inside].to_file(out, driver="GeoJSON")
    print(f"{out}: {int((~inside).sum())} buildings kept, {int(inside.sum())} in the block removed")


if __name__ == "__main__":
    main(*sys.argv[1:4])
