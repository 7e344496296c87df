"""Footprints drawn over imagery: a PNG on real data, and a clear error with no imagery."""

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from PIL import Image

from open_buildings.evaluation.overlay import plot_footprints
from open_buildings.geo import grid, imagery

ROOT = Path(__file__).resolve().parents[2]


def test_plot_footprints_on_the_sample(tmp_path: Path) -> None:
    tile = grid.tile_from_id("182f13ab")
    image = imagery.open_imagery(ROOT / "geo/sample/items.json").read(tile.grid)
    labels = gpd.read_file(ROOT / "tests/data/labels/nairobi_ke.geojson")
    out = tmp_path / "overlay.png"
    plot_footprints(
        image.rgb,
        image.valid,
        tile.grid,
        out,
        predictions=labels.assign(confidence=1.0),
        truth=labels,
        title="sample",
    )
    picture = np.asarray(Image.open(out).convert("RGB"))
    # The yellow outlines are there: pure-ish yellow pixels exist.
    yellow = (picture[..., 0] > 200) & (picture[..., 1] > 200) & (picture[..., 2] < 80)
    assert yellow.sum() > 500


def test_plot_footprints_needs_imagery(tmp_path: Path) -> None:
    g = grid.PixelGrid("EPSG:32737", grid.Affine(0.5, 0, 0, 0, -0.5, 0), 4, 4)
    with pytest.raises(ValueError, match="no valid pixel"):
        plot_footprints(
            np.zeros((3, 4, 4), np.uint8), np.zeros((4, 4), bool), g, tmp_path / "x.png"
        )
