"""Damaged footprint shards through ob-download and ob-eval (issue #14 item 6).

Before: a truncated ``.csv.gz`` was an ``EOFError`` traceback, a missing column a ``KeyError``,
a row of bad WKT a ``GEOSException``, and a NaN vertex crashed ``make_valid`` in ob-eval. Now
each is a clear error naming the file (and the row), exit 2, nothing written; ``--skip-bad``
leaves the damage out with a warning that counts it. The shards are written from real OSM
buildings of Nairobi (tests/data/labels).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from open_buildings.commands import download as ob_download
from open_buildings.commands import evaluate as ob_eval
from open_buildings.commands.evaluate_model import write_bbox_region
from open_buildings.geo.footprints import write_csv_gz, write_geoparquet

LABELS = Path(__file__).resolve().parents[1] / "data" / "labels" / "nairobi_ke.geojson"
SHARD = "182f_buildings"


@pytest.fixture(scope="module")
def buildings() -> gpd.GeoDataFrame:
    frame = gpd.read_file(LABELS)[["geometry"]].to_crs("EPSG:4326")
    frame = frame[frame.geometry.geom_type == "Polygon"].reset_index(drop=True)
    centres = shapely.centroid(frame.geometry.to_numpy())
    frame["latitude"], frame["longitude"] = shapely.get_y(centres), shapely.get_x(centres)
    frame["area_in_meters"] = frame.to_crs(frame.estimate_utm_crs()).area.to_numpy()
    frame["confidence"] = np.linspace(0.5, 0.99, len(frame))
    return frame


@pytest.fixture
def dataset(tmp_path: Path, buildings: gpd.GeoDataFrame) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    write_csv_gz(buildings, folder / f"{SHARD}.csv.gz")
    write_bbox_region(tuple(map(float, buildings.total_bounds)), tmp_path / "region.geojson")
    return folder


def _csv_rows(path: Path) -> list[str]:
    return gzip.decompress(path.read_bytes()).decode().splitlines()


def _write_rows(path: Path, rows: list[str]) -> None:
    path.write_bytes(gzip.compress(("\n".join(rows) + "\n").encode(), mtime=0))


def _garble_row(path: Path, index: int, geometry: str) -> None:
    rows = _csv_rows(path)
    head, _, tail = rows[index].partition('"POLYGON')
    rows[index] = head + f'"{geometry}"' + tail.split('"', 1)[1]
    _write_rows(path, rows)


def _download(tmp_path: Path, dataset: Path, *extra: str) -> list[str]:
    out = tmp_path / "out.csv.gz"
    return [str(tmp_path / "region.geojson"), "--source", str(dataset), "--out", str(out), *extra]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _gunzip(path: Path) -> None:
    path.write_bytes(gzip.decompress(path.read_bytes()))


def _drop_confidence(path: Path) -> None:
    # The confidence column is the 4th; no WKT comma comes before it.
    _write_rows(path, [",".join(r.split(",")[:3] + r.split(",")[4:]) for r in _csv_rows(path)])


DAMAGE = {
    "truncated": (_truncate, "is damaged after"),
    "not gzipped": (_gunzip, "is not gzipped"),
    "no confidence column": (_drop_confidence, "lacks the column(s) ['confidence']"),
    "bad WKT": (
        lambda p: _garble_row(p, 5, "POLYGON((36.9 -1.3, 36.9"),
        "row 5 has no readable polygon",
    ),
    "NaN vertex": (
        lambda p: _garble_row(p, 7, "POLYGON((36.9 -1.3,36.91 -1.3,36.91 nan,36.9 -1.3))"),
        "row 7 has no readable polygon",
    ),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_ob_download_names_the_damage_and_writes_nothing(
    tmp_path: Path, dataset: Path, damage: str, capsys
) -> None:
    make, says = DAMAGE[damage]
    make(dataset / f"{SHARD}.csv.gz")
    assert ob_download.main(_download(tmp_path, dataset)) == 2
    err = capsys.readouterr().err
    assert says in err and f"{SHARD}.csv.gz" in err and "--skip-bad" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out.csv.gz").exists()


@pytest.mark.parametrize("damage", ["bad WKT", "NaN vertex"])
def test_skip_bad_leaves_out_the_bad_row_and_counts_it(
    tmp_path: Path, dataset: Path, buildings: gpd.GeoDataFrame, damage: str, capsys
) -> None:
    DAMAGE[damage][0](dataset / f"{SHARD}.csv.gz")
    assert ob_download.main(_download(tmp_path, dataset, "--skip-bad")) == 0
    err = capsys.readouterr().err
    assert "warning: --skip-bad: skipped 1 damaged row(s) and 0 damaged file(s)" in err
    got = pd.read_csv(tmp_path / "out.csv.gz")
    assert len(got) == len(buildings) - 1


def test_skip_bad_keeps_the_rows_before_a_truncation(
    tmp_path: Path, dataset: Path, buildings: gpd.GeoDataFrame, capsys
) -> None:
    DAMAGE["truncated"][0](dataset / f"{SHARD}.csv.gz")
    assert ob_download.main(_download(tmp_path, dataset, "--skip-bad")) == 0
    assert "1 damaged file(s)" in capsys.readouterr().err
    assert 0 <= len(pd.read_csv(tmp_path / "out.csv.gz")) < len(buildings)


@pytest.mark.parametrize("cut", [0.3, 0.9])
def test_a_truncated_parquet_shard_is_named(
    tmp_path: Path, buildings: gpd.GeoDataFrame, cut: float, capsys
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    path = write_geoparquet(buildings, folder / f"{SHARD}.parquet").path
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * cut)])
    write_bbox_region(tuple(map(float, buildings.total_bounds)), tmp_path / "region.geojson")
    assert ob_download.main(_download(tmp_path, folder)) == 2
    err = capsys.readouterr().err
    assert f"{SHARD}.parquet is damaged" in err and "Traceback" not in err


def test_ob_eval_names_a_damaged_prediction_and_skip_bad_goes_on(
    tmp_path: Path, dataset: Path, capsys
) -> None:
    DAMAGE["bad WKT"][0](dataset / f"{SHARD}.csv.gz")
    argv = ["--pred", str(dataset), "--truth", str(LABELS), "--out", str(tmp_path / "ev")]
    assert ob_eval.main(argv) == 2
    err = capsys.readouterr().err
    assert "row 5 has no readable polygon" in err and "Traceback" not in err
    assert ob_eval.main([*argv, "--skip-bad"]) == 0
    assert "left out 1 damaged row(s)" in capsys.readouterr().err
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics  # scored without the damaged row


def test_ob_eval_refuses_a_nan_vertex_in_geojson_instead_of_crashing(
    tmp_path: Path, capsys
) -> None:
    data = json.loads(LABELS.read_text())
    ring = data["features"][3]["geometry"]["coordinates"][0]
    ring[1] = [ring[1][0], float("nan")]
    truth = tmp_path / "truth.geojson"
    truth.write_text(json.dumps(data))  # json writes the NaN literal, as some tools do
    argv = ["--pred", str(LABELS), "--truth", str(truth), "--out", str(tmp_path / "ev")]
    assert ob_eval.main(argv) == 2
    err = capsys.readouterr().err
    assert "feature 3" in err and "NaN" in err and "Traceback" not in err
    assert ob_eval.main([*argv, "--skip-bad", "--overwrite"]) == 0
    assert "left out 1 footprint(s)" in capsys.readouterr().err
