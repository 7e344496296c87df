"""``ob-download`` over HTTP from a mock bucket on 127.0.0.1: every layout, and byte ranges.

The bucket holds real copies of the layouts: an ``ob-infer`` output folder as written, and its
rows laid out like the published v3 data (``polygons_s2_level_4_gzip/`` with a header row,
``polygons_s2_level_6_gzip_no_header/`` without). Like public object storage it lists no folders.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import shapely
from conftest import write_region
from http_bucket import serve

from open_buildings.commands import download as ob_download
from open_buildings.geo import cells, footprints, shard_source
from open_buildings.geo.shard_read import read_footprints
from open_buildings.pipelines import download

INSIDE = (36.9071, -1.3056, 36.9076, -1.3051)  # a part of the small test region
FAR = (2.30, 48.80, 2.40, 48.90)  # Paris: no shard there


@pytest.fixture(scope="module")
def bucket_root(clean_run: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bucket's files: the run itself, and its rows in both published v3 layouts."""
    root = tmp_path_factory.mktemp("bucket")
    shutil.copytree(clean_run["out"], root / "run")
    frame = read_footprints(clean_run["out"] / "182f_buildings.parquet")
    level4 = root / "v3" / "polygons_s2_level_4_gzip"
    level4.mkdir(parents=True)
    footprints.write_csv_gz(frame, level4 / f"{cells.cell_token(36.9, -1.3, 4)}_buildings.csv.gz")
    level6 = root / "v3" / "polygons_s2_level_6_gzip_no_header"
    level6.mkdir()
    with_header = gzip.decompress((level4 / next(p.name for p in level4.iterdir())).read_bytes())
    shard = level6 / f"{cells.cell_token(36.9, -1.3, 6)}_buildings.csv.gz"
    shard.write_bytes(gzip.compress(with_header.split(b"\n", 1)[1], mtime=0))
    return root


def _expected(clean_run: dict) -> list[str]:
    frame = read_footprints(clean_run["out"] / "182f_buildings.parquet")
    keep = shapely.intersects(shapely.box(*INSIDE), frame.geometry.to_numpy())
    return sorted(frame[keep]["full_plus_code"])


@pytest.mark.parametrize(
    ("source", "extra"),
    [
        ("run", []),  # an ob-infer folder: its manifest names the shards
        ("v3/polygons_s2_level_4_gzip", []),  # the folder's name says the layout
        ("v3/polygons_s2_level_6_gzip_no_header", []),
        ("v3", ["--layout", "v3"]),  # the dataset root: no listing, so the layout is given
        ("v3", ["--layout", "v3-no-header"]),
    ],
)
def test_ob_download_reads_every_layout_over_http(
    bucket_root: Path, clean_run: dict, tmp_path: Path, source: str, extra: list[str]
) -> None:
    region = write_region(tmp_path / "inside.geojson", INSIDE)
    out = tmp_path / "inside.parquet"
    with serve(bucket_root) as bucket:
        argv = [str(region), "--source", f"{bucket.url}/{source}", "--out", str(out), *extra]
        assert ob_download.main([*argv, "--no-progress"]) == 0
    got = read_footprints(out)
    assert 0 < len(got) and sorted(got["full_plus_code"]) == _expected(clean_run)
    assert not [path for method, path, _ in bucket.log if path.endswith("/")]  # never listed


def test_a_dataset_root_without_a_listing_or_layout_is_a_clear_error(
    bucket_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    region = write_region(tmp_path / "inside.geojson", INSIDE)
    with serve(bucket_root) as bucket:
        argv = [str(region), "--source", f"{bucket.url}/v3", "--out", str(tmp_path / "o.csv")]
        assert ob_download.main(argv) == 2
    assert "--layout v3" in capsys.readouterr().err


def test_no_shard_over_http_is_no_data_and_exit_1(
    bucket_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with serve(bucket_root) as bucket:
        argv = ["--bbox", ",".join(map(str, FAR)), "--source", f"{bucket.url}/run"]
        assert ob_download.main([*argv, "--out", str(tmp_path / "far.csv.gz")]) == 1
    assert "no shard covering the region" in capsys.readouterr().err


def test_geoparquet_row_groups_outside_the_region_are_not_fetched(
    clean_run: dict, tmp_path: Path
) -> None:
    # The run's shard rewritten in row groups of 8 rows (still S2-ordered, with the bbox column).
    root = tmp_path / "bucket"
    shutil.copytree(clean_run["out"], root)
    shard = root / "182f_buildings.parquet"
    table = pq.read_table(shard)
    pq.write_table(table, shard, row_group_size=8)
    (root / "182f_buildings.csv.gz").unlink()  # the Parquet file is the one read
    assert pq.ParquetFile(shard).num_row_groups >= 5
    small = (36.9072, -1.3055, 36.9073, -1.3054)
    with serve(root) as bucket:
        out = tmp_path / "small.csv.gz"
        result = download.download(shapely.box(*small), bucket.url, out, fmt="csv")
        fetched = bucket.bytes_sent("182f_buildings.parquet")
    local = read_footprints(shard)
    want = local[shapely.intersects(shapely.box(*small), local.geometry.to_numpy())]
    got = pd.read_csv(out)
    assert result["rows"] == len(got) == len(want) > 0
    assert 0 < fetched < shard.stat().st_size  # the footer and the row groups it needs only


def test_gs_urls_go_to_gcsfs_anonymously_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    import gcsfs

    fs = shard_source.filesystem("gs://open-buildings-data/v3/polygons_s2_level_4_gzip")
    assert isinstance(fs, gcsfs.GCSFileSystem) and fs.credentials.method == "anon"
    assert type(shard_source.filesystem("https://example.org/x")).__name__ == "HTTPFileSystem"


@pytest.mark.parametrize(
    ("select", "suffix"),
    [
        (["--country", "KEN"], ".fgb"),
        (["--bbox", ",".join(map(str, INSIDE))], ".geojsonl"),
        (["--bbox", ",".join(map(str, INSIDE))], ".gpkg"),
        (["--bbox", ",".join(map(str, INSIDE))], ".csv.gz"),
        (["--bbox", ",".join(map(str, INSIDE))], ".geojson"),
    ],
)
def test_a_country_or_a_box_over_http_into_each_format(
    bucket_root: Path, clean_run: dict, tmp_path: Path, select: list[str], suffix: str
) -> None:
    import geopandas as gpd

    out = tmp_path / f"buildings{suffix}"
    with serve(bucket_root) as bucket:
        source = f"{bucket.url}/v3/polygons_s2_level_6_gzip_no_header"
        assert ob_download.main([*select, "--source", source, "--out", str(out)]) == 0
    got = read_footprints(out) if suffix == ".csv.gz" else gpd.read_file(out)
    everything = read_footprints(clean_run["out"])
    want = _expected(clean_run) if select[0] == "--bbox" else sorted(everything["full_plus_code"])
    assert sorted(got["full_plus_code"]) == want
