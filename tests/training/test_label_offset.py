"""The label shift estimate on real Banepa tiles, with the shipped model as the one that sees."""

from pathlib import Path

import geopandas as gpd
import pytest

from open_buildings.geo.grid import GridSpec
from open_buildings.geo.imagery import open_imagery
from open_buildings.models.checkpoint import load_checkpoint
from open_buildings.resources import resource
from open_buildings.training.label_offset import Offset, label_offset
from open_buildings.training.scenes import load_scenes, read_labels

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def model():
    return load_checkpoint(str(resource("models", "default", "weights.safetensors")))


def _offset(model, east: float, north: float) -> Offset:
    labels = read_labels(DATA / "labels" / "banepa_4tiles.geojson")
    utm = labels.estimate_utm_crs()
    moved = gpd.GeoDataFrame(geometry=labels.to_crs(utm).translate(east, north), crs=utm)
    source = open_imagery(str(DATA / "imagery" / "banepa"))
    scenes = load_scenes("banepa", source, moved.to_crs(4326), GridSpec(level=16))
    return label_offset(model, scenes)


def test_a_shift_of_the_labels_is_measured_in_metres(model) -> None:
    here = _offset(model, 0.0, 0.0)
    moved = _offset(model, 3.0, -2.0)
    # the shift added is found to within a pixel (0.5 m) each way, whatever the labels' own
    assert moved.east_m - here.east_m == pytest.approx(3.0, abs=0.5)
    assert moved.north_m - here.north_m == pytest.approx(-2.0, abs=0.5)
    assert here.metres < 1.5  # these OSM labels sit on the buildings
    assert "east" in moved.describe() and "south" in moved.describe()


def test_no_labelled_scene_gives_no_estimate(model) -> None:
    assert label_offset(model, []) is None
