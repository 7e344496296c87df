"""A trained change model in ob-change: the change rasters per pair of dates, and each building's
change confidence read from the pair in which its change lies."""

from __future__ import annotations

import datetime
import gzip
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
from pyproj import Transformer
from rasterio.transform import from_origin

from open_buildings.commands import change as ob_change
from open_buildings.geo import cells
from open_buildings.geo.grid import GridSpec
from open_buildings.pipelines.change_model import CHANGE_FOLDER, building_change_confidence

DATA = Path(__file__).resolve().parents[1] / "data"
TILE_A = DATA / "imagery" / "banepa" / "OAM-386690-220241-19.tif"
DATES = [datetime.date(2020, 1, 1), datetime.date(2021, 1, 1), datetime.date(2022, 1, 1)]


def _buildings_and_rasters(out: Path) -> gpd.GeoDataFrame:
    """Five buildings around one Banepa point; the change raster of their tile has 0.2 in the
    first pair, 0.8 in the second, and no imagery under the last building in either."""
    lon, lat = 85.5215, 27.6318
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32645", always_xy=True)
    x0, y0 = to_utm.transform(lon, lat)
    bands = np.stack([np.full((200, 200), 50, np.uint8), np.full((200, 200), 200, np.uint8)])
    bands[:, 150:, 150:] = 255  # nodata: no imagery in either pair (rows/cols from the top left)
    transform = from_origin(x0 - 50, y0 + 50, 0.5, 0.5)
    tile = cells.cell_token(lon, lat, GridSpec().level)
    (out / CHANGE_FOLDER).mkdir(parents=True)
    with rasterio.open(out / CHANGE_FOLDER / f"{tile}.tif", "w", driver="GTiff", width=200,
                       height=200, count=2, dtype="uint8", crs="EPSG:32645",
                       transform=transform, nodata=255) as dst:  # fmt: skip
        dst.write(bands)
    to_lonlat = Transformer.from_crs("EPSG:32645", "EPSG:4326", always_xy=True)
    rows = [
        ("new", "2021-01-01", "2022-01-01", -30, 20),
        ("new", "2022-01-01", "2022-01-01", -10, 20),
        ("removed", "2020-01-01", "2020-01-01", 10, 20),
        ("unchanged", "2020-01-01", "2022-01-01", 25, 20),
        ("new", "2021-01-01", "2022-01-01", 35, -35),
    ]
    geoms, lons, lats = [], [], []
    for *_, dx, dy in rows:
        box = shapely.box(x0 + dx - 3, y0 + dy - 3, x0 + dx + 3, y0 + dy + 3)
        geoms.append(shapely.transform(box, lambda xy: np.column_stack(to_lonlat.transform(*xy.T))))
        lons.append(geoms[-1].centroid.x)
        lats.append(geoms[-1].centroid.y)
    assert {cells.cell_token(x, y, GridSpec().level) for x, y in zip(lons, lats)} == {tile}
    return gpd.GeoDataFrame(
        {"change": [r[0] for r in rows], "first_seen": [r[1] for r in rows],
         "last_seen": [r[2] for r in rows], "longitude": lons, "latitude": lats},
        geometry=geoms, crs="EPSG:4326",
    )  # fmt: skip


def test_confidence_is_read_from_the_pair_where_the_change_lies(tmp_path: Path) -> None:
    buildings = _buildings_and_rasters(tmp_path)
    got = building_change_confidence(buildings, DATES, tmp_path)
    # new in 2021: pair 2020/2021 (0.2); new in 2022: pair 2021/2022 (0.8); removed after 2020:
    # pair 2020/2021 (0.2); unchanged: the larger of both (0.8); no imagery: NaN
    np.testing.assert_allclose(got[:4], [0.2, 0.8, 0.2, 0.8])
    assert np.isnan(got[4])


def _change_model(tmp_path: Path) -> Path:
    import torch

    from open_buildings.models.checkpoint import save_checkpoint
    from open_buildings.models.registry import build_model

    torch.manual_seed(0)
    path = tmp_path / "change.safetensors"
    save_checkpoint(build_model("change_unet_lite0").eval(), path)
    return path


def test_ob_change_adds_the_change_models_confidence(tmp_path: Path, capsys) -> None:
    from open_buildings.commands.evaluate_model import write_bbox_region
    from open_buildings.geo.imagery import open_imagery

    region = write_bbox_region(open_imagery(str(TILE_A)).bounds_lonlat(), tmp_path / "r.json")
    out = tmp_path / "change"
    model = str(_change_model(tmp_path))
    argv = [region, "--imagery", f"2023-01-01={TILE_A}", "--imagery", f"2024-01-01={TILE_A}",
            "--out", str(out), "--quiet", "--change-model", model]  # fmt: skip
    assert ob_change.main(argv) == 0
    assert "the change model confirms" in capsys.readouterr().out
    with gzip.open(out / "change.csv.gz", "rt") as handle:
        csv = pd.read_csv(handle)
    assert list(csv.columns)[-1] == "change_confidence" and len(csv) > 5
    assert csv["change_confidence"].between(0, 1).all()  # every building had both dates
    parquet = pd.read_parquet(out / "change.parquet")
    np.testing.assert_allclose(
        np.sort(parquet["change_confidence"]), np.sort(csv["change_confidence"]), atol=5e-5
    )
    rasters = sorted((out / CHANGE_FOLDER).glob("*.tif"))
    assert [p.name for p in rasters] == [p.name for p in sorted((out / "presence").glob("*.tif"))]
    with rasterio.open(rasters[0]) as src:
        assert src.count == 1 and src.descriptions == ("2023-01-01/2024-01-01",)
    summary = json.loads((out / "change.json").read_text())
    assert set(summary["confirmed_by_change_model"]) == {"new", "removed"}


def test_a_building_model_is_refused_before_any_date_runs(tmp_path: Path, capsys) -> None:
    out = tmp_path / "change"
    argv = [str(tmp_path / "unused.json"), "--imagery", f"2023-01-01={TILE_A}", "--imagery",
            f"2024-01-01={TILE_A}", "--out", str(out), "--change-model", "default"]  # fmt: skip
    assert ob_change.main(argv) == 2
    assert "needs a two-date change model" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "change.partial").exists()


@pytest.fixture(autouse=True)
def _offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
