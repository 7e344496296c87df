"""``ob-change`` end to end on real imagery: ob-infer per date, buildings matched across dates."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio

from open_buildings.commands import change as ob_change
from open_buildings.commands.evaluate_model import write_bbox_region
from open_buildings.geo.imagery import open_imagery
from open_buildings.geo.shard_read import read_footprints

BANEPA = Path(__file__).resolve().parent / "data" / "imagery" / "banepa"
TILE_A = BANEPA / "OAM-386690-220241-19.tif"
TILE_B = BANEPA / "OAM-386691-220242-19.tif"


def _region(tmp_path: Path, *tiles: Path) -> str:
    boxes = np.array([open_imagery(str(t)).bounds_lonlat() for t in tiles])
    box = (*boxes[:, :2].min(axis=0), *boxes[:, 2:].max(axis=0))
    return write_bbox_region(tuple(float(v) for v in box), tmp_path / "region.json")


def test_the_same_imagery_twice_is_all_unchanged_with_a_band_per_date(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "change"
    argv = [_region(tmp_path, TILE_A), "--imagery", f"2024-02-01={TILE_A}", "--imagery",
            f"2023-01-01={TILE_A}", "--out", str(out), "--quiet"]  # fmt: skip
    assert ob_change.main(argv) == 0
    said = capsys.readouterr().out
    summary = json.loads((out / "change.json").read_text())
    n = summary["per_date"]["2023-01-01"]
    assert n > 5 and summary["per_date"]["2024-02-01"] == n
    assert summary["change"] == {"new": 0, "removed": 0, "unchanged": n}
    assert f"{n} buildings over 2 dates" in said and f"{out}/change.csv.gz" in said
    with gzip.open(out / "change.csv.gz", "rt") as handle:
        csv = pd.read_csv(handle)
    assert list(csv.columns)[-3:] == ["change", "first_seen", "last_seen"]
    assert set(csv["first_seen"]) == {"2023-01-01"} and set(csv["last_seen"]) == {"2024-02-01"}
    parquet = pd.read_parquet(out / "change.parquet")
    assert len(parquet) == n and set(parquet["change"]) == {"unchanged"}
    alone = read_footprints(out / "dates" / "2023-01-01")
    assert sorted(np.round(alone["area_in_meters"], 1)) == sorted(
        np.round(csv["area_in_meters"], 1)
    )
    tiles = sorted((out / "presence").glob("*.tif"))
    assert tiles
    with rasterio.open(tiles[0]) as src:
        assert src.count == 2 and src.descriptions == ("2023-01-01", "2024-02-01")
        a, b = src.read(1), src.read(2)
        assert (a == b).all() and (a[a != 255] > 125).any()
    assert not (tmp_path / "change.partial").exists()


def test_no_change_is_claimed_where_only_one_date_has_imagery(tmp_path: Path) -> None:
    out = tmp_path / "change"
    argv = [_region(tmp_path, TILE_A, TILE_B), "--imagery", f"2023-01-01={TILE_A}", "--imagery",
            f"2024-01-01={TILE_B}", "--out", str(out), "--quiet"]  # fmt: skip
    assert ob_change.main(argv) == 0
    summary = json.loads((out / "change.json").read_text())
    # the two tiles are diagonal neighbours: no building is seen by both dates' imagery
    assert min(summary["per_date"].values()) > 0
    assert summary["change"]["new"] == summary["change"]["removed"] == 0


@pytest.mark.parametrize(
    ("imagery", "message"),
    [
        ([f"2023-01-01={TILE_A}"], "needs imagery of at least two dates"),
        ([str(TILE_A), str(TILE_B)], "has no date; write DATE=SOURCE"),
        ([f"2023-01-01={TILE_A}", f"2023-01-01={TILE_B}"], "share the date 2023-01-01"),
    ],
)
def test_bad_dates_are_exit_2_with_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], imagery: list[str], message: str
) -> None:
    argv = [_region(tmp_path, TILE_A), "--out", str(tmp_path / "o")]
    for spec in imagery:
        argv += ["--imagery", spec]
    assert ob_change.main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_full_output_folder_is_not_replaced_without_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = [_region(tmp_path, TILE_A), "--out", str(out), "--imagery", f"2023-01-01={TILE_A}",
            "--imagery", f"2024-01-01={TILE_A}"]  # fmt: skip
    assert ob_change.main(argv) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
