"""Multi-date imagery: several dated sources read onto one tile grid as a time stack."""

from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from open_buildings.errors import ImageryError
from open_buildings.geo.grid import tile_for_point
from open_buildings.geo.imagery import open_imagery
from open_buildings.geo.imagery_dates import open_dated_imagery, parse_dated_spec

DATA = Path(__file__).resolve().parents[1] / "data" / "imagery"
BANEPA = DATA / "banepa"
TILE_A = BANEPA / "OAM-386690-220241-19.tif"
TILE_B = BANEPA / "OAM-386691-220242-19.tif"


def _centre(path: Path) -> tuple[float, float]:
    w, s, e, n = open_imagery(str(path)).bounds_lonlat()
    return (w + e) / 2, (s + n) / 2


def test_each_date_is_read_onto_the_same_grid_with_its_own_validity() -> None:
    later, earlier = f"2024-03-01={TILE_B}", f"2023-01-15={TILE_A}"
    dated = open_dated_imagery([later, earlier])
    assert dated.dates == (datetime.date(2023, 1, 15), datetime.date(2024, 3, 1))
    tile = tile_for_point(*_centre(TILE_A))
    stack = dated.read(tile.grid)
    alone = open_imagery(str(TILE_A)).read(tile.grid)
    assert stack.rgb.shape == (2, *alone.rgb.shape)
    np.testing.assert_array_equal(stack.rgb[0], alone.rgb)  # oldest first, pixel for pixel
    np.testing.assert_array_equal(stack.valid[0], alone.valid)
    # the two OAM tiles are neighbours (diagonally): each covers a different part of the tile
    assert stack.valid[0].any() and stack.valid[1].any()
    assert not (stack.valid[0] & stack.valid[1]).any()
    assert stack.covered.tolist() == [True, True]
    assert stack.image(1).grid == tile.grid
    w, s, e, n = dated.bounds_lonlat()
    assert w < _centre(TILE_A)[0] < e and s < _centre(TILE_B)[1] < n


def test_a_date_that_misses_the_tile_says_so() -> None:
    dated = open_dated_imagery(
        [f"2020-01-01={TILE_A}", f"2021-01-01={DATA / 'rasterio_cogeo_0.6m_no_buildings.tif'}"]
    )
    stack = dated.read(tile_for_point(*_centre(TILE_A)).grid)
    assert stack.covered.tolist() == [True, False]
    assert not stack.rgb[1][:, ~stack.valid[1]].any()


def test_a_stac_collection_is_grouped_by_its_items_days(tmp_path: Path) -> None:
    doc = json.loads((DATA / "stac" / "item_collection.json").read_text())
    doc["features"][0]["properties"]["datetime"] = "2011-05-20T10:00:00Z"
    doc["features"][1]["properties"]["datetime"] = "2011-05-24T16:30:00Z"
    for f in doc["features"]:
        for asset in f["assets"].values():
            asset["href"] = str((DATA / "stac" / asset["href"]).resolve())
    path = tmp_path / "dates.json"
    path.write_text(json.dumps(doc))
    dated = open_dated_imagery([path])
    assert dated.dates == (datetime.date(2011, 5, 20), datetime.date(2011, 5, 24))
    doc["features"][1]["properties"].update(
        datetime=None, start_datetime="2011-06-01T00:00:00Z", end_datetime="2011-06-30T00:00:00Z"
    )
    path.write_text(json.dumps(doc))
    assert open_dated_imagery([path]).dates[1] == datetime.date(2011, 6, 1)
    del doc["features"][1]["properties"]["start_datetime"]
    path.write_text(json.dumps(doc))
    with pytest.raises(ImageryError, match="start_datetime and end_datetime must be supplied"):
        open_dated_imagery([path])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("pre/", "has no date; write DATE=SOURCE"),
        ("20-05-2011=pre/", "is not a date; write it as YYYY-MM-DD"),
        ("2011-05-20=", "has no date"),
    ],
)
def test_an_undated_or_misdated_spec_says_how_to_write_it(spec: str, message: str) -> None:
    with pytest.raises(ImageryError, match=message):
        parse_dated_spec(spec)


def test_two_sources_of_one_date_are_refused(tmp_path: Path) -> None:
    copy = tmp_path / TILE_A.name
    shutil.copy(TILE_A, copy)
    shutil.copy(f"{TILE_A}.aux.xml", f"{copy}.aux.xml")
    with pytest.raises(ImageryError, match="share the date 2020-01-01"):
        open_dated_imagery([f"2020-01-01={TILE_A}", f"2020-01-01={copy}"])
    with pytest.raises(ImageryError, match="does not exist|no such"):
        open_dated_imagery([f"2020-01-01={tmp_path / 'missing.tif'}"])
