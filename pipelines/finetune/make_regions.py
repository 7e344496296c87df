"""Write the regions run.sh uses: per area, the test block (a whole S2 level-14 tile that neither
the leave-one-out base nor the fine-tuning sees) and the fine-tuning region (the imagery's box
without that block). From the repository root:
    .venv/bin/python pipelines/finetune/make_regions.py
"""

import json
from pathlib import Path

import shapely

from open_buildings.geo import grid
from open_buildings.geo.imagery import open_imagery

DATA = Path("../shared/data")
HERE = Path("pipelines/finetune/regions")
BLOCKS = Path("pipelines/eval/val_blocks")
# area -> (imagery, test block tiles); the first three are base.yaml's validation blocks.
AREAS = {
    "banepa": ("banepa_np/oam", ["39eb0f33"]),
    "dar_es_salaam": ("xyz_tiles/dar_es_salaam_tz", ["18432b55", "185cd4ab"]),
    "nairobi": ("xyz_tiles/nairobi_ke", ["182f13a9", "182f13ab"]),
    "joplin": ("multidate/joplin_us/pre", ["87c87b6f"]),  # fully imaged, 89 footprints
}


def main() -> None:
    """Write ``<area>_test.geojson`` and ``<area>_finetune.geojson`` for every area."""
    HERE.mkdir(parents=True, exist_ok=True)
    for area, (imagery, tiles) in AREAS.items():
        block = shapely.union_all([grid.tile_from_id(t).core for t in tiles])
        box = shapely.box(*open_imagery(str(DATA / imagery)).bounds_lonlat())
        for name, geometry in (("test", block), ("finetune", box.difference(block))):
            feature = {
                "type": "Feature",
                "properties": {"area": area, "test_tiles": tiles, "written_by": __file__},
                "geometry": shapely.geometry.mapping(shapely.intersection(geometry, box)),
            }
            path = HERE / f"{area}_{name}.geojson"
            path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))


if __name__ == "__main__":
    main()
