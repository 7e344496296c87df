"""Write the validation blocks of pipelines/train/default/base.yaml as region GeoJSONs.

Each area's block is the part of its held-out tiles' cores that has imagery: exactly the pixels
ob-train validates and calibrates on. ob-eval-model scores a model there as a user would get it
(pipelines/eval/val_blocks.sh).
    .venv/bin/python pipelines/eval/make_val_blocks.py [-o data_root=/path/to/shared/data]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio.features
import shapely

from open_buildings.config import load_config
from open_buildings.training.batches import load_areas
from open_buildings.training.config import TrainConfig

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parent / "train" / "default" / "base.yaml"


def main(overrides: list[str]) -> None:
    cfg = load_config(TrainConfig, CONFIG, overrides)
    for area in cfg.val:
        parts = []
        for scene in load_areas(cfg, [area], labelled=True):
            mask = (scene.core & scene.valid).astype(np.uint8)
            shapes = rasterio.features.shapes(mask, mask=mask.astype(bool), transform=scene.grid.transform)
            local = shapely.union_all([shapely.geometry.shape(g) for g, _ in shapes])
            parts.append(gpd.GeoSeries([local], crs=scene.grid.crs).to_crs("EPSG:4326").iloc[0])
        block = shapely.union_all(parts).simplify(1e-6)
        name = area.name.removesuffix("_val")
        feature = {
            "type": "Feature",
            "properties": {"area": name, "tiles": area.tiles, "config": str(CONFIG.relative_to(HERE.parents[1]))},
            "geometry": shapely.geometry.mapping(block),
        }
        path = HERE / "val_blocks" / f"{name}.geojson"
        path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}) + "\n")
        print(path, f"{gpd.GeoSeries([block], crs='EPSG:4326').to_crs(scene.grid.crs).area.iloc[0] / 1e6:.4f} km2")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", action="append", default=[], metavar="KEY=VALUE")
    main(parser.parse_args().o)
