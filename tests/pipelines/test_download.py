"""``ob-download``: shard selection, both dataset layouts, streaming, the three output formats."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pytest
import shapely
from conftest import write_region

from open_buildings.commands import download as ob_download
from open_buildings.geo import cells, footprints
from open_buildings.geo.shard_read import read_footprints
from open_buildings.pipelines import download, sinks

INSIDE = (36.9071, -1.3056, 36.9076, -1.3051)  # a part of the small test region


@pytest.fixture(scope="module")
def v3_root(clean_run: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The clean run's buildings laid out like the published v3 data, plus a far-away decoy."""
    root = tmp_path_factory.mktemp("v3")
    folder = root / "polygons_s2_level_4_gzip"
    folder.mkdir()
    frame = read_footprints(clean_run["out"] / "182f_buildings.parquet")
    token = cells.cell_token(36.9, -1.3, 4)
    footprints.write_csv_gz(frame, folder / f"{token}_buildings.csv.gz")
    # A shard on another continent: it must never be opened (it is not even valid gzip).
    far = cells.cell_token(2.35, 48.85, 4)
    (folder / f"{far}_buildings.csv.gz").write_bytes(b"not a shard")
    return root


def _expected(frame: gpd.GeoDataFrame, bounds) -> gpd.GeoDataFrame:
    return frame[shapely.intersects(shapely.box(*bounds), frame.geometry.to_numpy())]


def test_v3_layout_reads_only_the_shards_touching_the_region(
    v3_root: Path, clean_run: dict, tmp_path: Path
) -> None:
    layout = download.detect_layout(str(v3_root))
    assert layout.level == 4 and layout.suffix == ".csv.gz"
    out = tmp_path / "inside.csv.gz"
    result = download.download(
        shapely.box(*INSIDE), str(v3_root), out, fmt="csv", chunk_rows=7
    )  # tiny chunks: the streaming path
    assert [Path(s).parent.name for s in result["shards"]] == ["polygons_s2_level_4_gzip"]
    source = read_footprints(clean_run["out"] / "182f_buildings.csv.gz")
    expected = _expected(source, INSIDE)
    got = pd.read_csv(out)
    assert 0 < len(got) == len(expected) == result["rows"] < len(source)
    assert list(got.columns) == footprints.SCHEMA_COLUMNS
    assert sorted(got["full_plus_code"]) == sorted(expected["full_plus_code"])


@pytest.mark.parametrize("fmt", ["csv", "parquet", "geojson"])
def test_ob_infer_folder_in_every_format(
    clean_run: dict, tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    region = write_region(tmp_path / "inside.geojson", INSIDE)
    out = tmp_path / f"out.{fmt}"
    argv = [str(region), "--source", str(clean_run["out"]), "--format", fmt, "--out", str(out)]
    assert ob_download.main([*argv, "--min-confidence", "0.5"]) == 0
    source = read_footprints(clean_run["out"])
    expected = _expected(source[source["confidence"] >= 0.5], INSIDE)
    if fmt == "parquet":
        got = gpd.read_parquet(out)
        meta = json.loads(__import__("pyarrow.parquet").parquet.read_schema(out).metadata[b"geo"])
        assert meta["version"] == "1.1.0" and "covering" in meta["columns"]["geometry"]
        minx, miny, maxx, maxy = got.total_bounds
        part = gpd.read_parquet(out, bbox=(minx, miny, (minx + maxx) / 2, (miny + maxy) / 2))
        assert 0 < len(part) <= len(got)
    elif fmt == "geojson":
        got = gpd.read_file(out)
    else:
        got = pd.read_csv(out)
    assert len(got) == len(expected) > 0
    assert f"{len(expected):,} buildings from 1 shard(s)" in capsys.readouterr().out
    # an existing file is never replaced silently
    assert ob_download.main(argv) == 2
    assert "already exists" in capsys.readouterr().err


def test_a_folder_that_is_not_a_dataset_is_a_clear_error(tmp_path: Path, capsys) -> None:
    region = write_region(tmp_path / "r.geojson", INSIDE)
    assert ob_download.main([str(region), "--source", str(tmp_path)]) == 2
    assert "polygons_s2_level_<L>_gzip" in capsys.readouterr().err


def test_stages_shard_names_match_what_download_looks_for() -> None:
    assert sinks.shard_file_names("182f", ["csv", "parquet"]) == [
        "182f_buildings.csv.gz",
        "182f_buildings.parquet",
    ]


def test_the_headerless_v3_layout_is_read_with_the_v3_names(
    clean_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # polygons_s2_level_6_gzip_no_header/ (what Google's own notebook reads): the same rows,
    # no header line. It used to fail with KeyError: 'geometry'.
    source = read_footprints(clean_run["out"] / "182f_buildings.csv.gz")
    folder = tmp_path / "v3" / "polygons_s2_level_6_gzip_no_header"
    folder.mkdir(parents=True)
    with_header = tmp_path / "with_header.csv.gz"
    footprints.write_csv_gz(source, with_header)
    lines = gzip.decompress(with_header.read_bytes()).split(b"\n", 1)[1]
    shard = folder / f"{cells.cell_token(36.9, -1.3, 6)}_buildings.csv.gz"
    shard.write_bytes(gzip.compress(lines, mtime=0))
    layout = download.detect_layout(str(tmp_path / "v3"))
    assert (layout.level, layout.header) == (6, False)
    region = write_region(tmp_path / "inside.geojson", INSIDE)
    out = tmp_path / "out.csv.gz"
    argv = [str(region), "--source", str(tmp_path / "v3"), "--out", str(out)]
    assert ob_download.main(argv) == 0
    got = pd.read_csv(out)
    expected = _expected(read_footprints(with_header), INSIDE)  # the rows as the shard has them
    assert 0 < len(got) == len(expected)
    assert sorted(got["full_plus_code"]) == sorted(expected["full_plus_code"])
    # A shard with a header in a no-header folder: its first row says so, and it is read right;
    # told the layout with --layout, the header row is named, not read as a building.
    shard.write_bytes(with_header.read_bytes())
    assert ob_download.main([*argv, "--overwrite"]) == 0
    assert sorted(pd.read_csv(out)["full_plus_code"]) == sorted(expected["full_plus_code"])
    assert ob_download.main([*argv, "--overwrite", "--layout", "v3-no-header"]) == 2
    assert "starts with a header row" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "fmt", "status"),
    [("k.fgb", None, 0), ("k.gpkg", None, 0), ("k.geojsonl", None, 0), ("k.parquet", None, 0),
     ("k.geojson", None, 0), ("k.csv", None, 0), ("k.shp", None, 2), ("k.parquet", "csv", 2)],
)  # fmt: skip
def test_the_output_format_follows_the_suffix_and_a_foreign_one_is_refused(
    clean_run: dict, tmp_path: Path, name: str, fmt: str | None, status: int, capsys
) -> None:
    # --out k.fgb used to write CSV text into k.fgb without a word.
    region = write_region(tmp_path / "inside.geojson", INSIDE)
    out = tmp_path / name
    argv = [str(region), "--source", str(clean_run["out"]), "--out", str(out)]
    assert ob_download.main(argv + (["--format", fmt] if fmt else [])) == status
    if status:
        assert "ob-download: error: --out" in capsys.readouterr().err and not out.exists()
        return
    expected = _expected(read_footprints(clean_run["out"]), INSIDE)
    if name.endswith((".csv", ".parquet")):
        got = pd.read_csv(out) if name.endswith(".csv") else gpd.read_parquet(out)
    else:
        got = gpd.read_file(out)
    assert len(got) == len(expected) > 0
    assert sorted(got["full_plus_code"]) == sorted(expected["full_plus_code"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["inside.geojson", name])


def test_a_region_without_data_is_exit_1_with_a_warning(clean_run: dict, tmp_path: Path, capsys):
    region = write_region(tmp_path / "paris.geojson", (2.34, 48.85, 2.35, 48.86))
    out = tmp_path / "paris.csv.gz"
    argv = [str(region), "--source", str(clean_run["out"]), "--out", str(out)]
    assert ob_download.main(argv) == 1
    assert "no shard covering the region" in capsys.readouterr().err


def test_bbox_selects_like_a_region_file(clean_run: dict, tmp_path: Path, capsys) -> None:
    region = write_region(tmp_path / "inside.geojson", INSIDE)
    by_file, by_box = tmp_path / "file.csv.gz", tmp_path / "box.csv.gz"
    source = ["--source", str(clean_run["out"])]
    assert ob_download.main([str(region), *source, "--out", str(by_file)]) == 0
    box = ",".join(str(v) for v in INSIDE)
    assert ob_download.main([*source, "--bbox", box, "--out", str(by_box)]) == 0
    assert by_file.read_bytes() == by_box.read_bytes()
    assert ob_download.main([*source, "--out", str(tmp_path / "x.csv.gz")]) == 2
    assert "give one of: a region file, --bbox W,S,E,N, or --country" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ob_download.main([*source, "--bbox", "1,2,3"])


def test_the_progress_bar_counts_shards_and_buildings(clean_run: dict, tmp_path: Path, capsys):
    out = tmp_path / "x.csv.gz"
    result = download.download(shapely.box(*INSIDE), str(clean_run["out"]), out, progress=True)
    err = capsys.readouterr().err
    assert "1/1" in err and f"buildings={result['rows']:,}" in err


def test_a_country_by_iso_code_or_name_selects_its_buildings(
    clean_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from open_buildings import download as api_download

    source = read_footprints(clean_run["out"])  # all of it in Nairobi, Kenya
    out = tmp_path / "kenya.parquet"
    argv = ["--country", "KEN", "--source", str(clean_run["out"]), "--out", str(out)]
    assert ob_download.main([*argv, "--no-progress"]) == 0
    assert "country KEN (Kenya)" in capsys.readouterr().out
    assert sorted(read_footprints(out)["full_plus_code"]) == sorted(source["full_plus_code"])
    frame = api_download("Kenya", clean_run["out"])
    assert len(frame) == len(source)
    # France has no shard here: no data, exit 1; a misspelt name is an error with a suggestion
    far = ["--country", "fr", "--source", str(clean_run["out"]), "--out", str(tmp_path / "f.csv")]
    assert ob_download.main(far) == 1
    bad = ["--country", "Kenia", "--source", str(clean_run["out"])]
    assert ob_download.main(bad) == 2
    assert "did you mean Kenya" in capsys.readouterr().err
    assert ob_download.main(["--list-countries"]) == 0
    assert "KEN  KE  Kenya" in capsys.readouterr().out


def test_the_shipped_country_outlines_are_whole_and_the_right_size() -> None:
    from open_buildings.geo.countries import countries, country_region

    table = countries()
    assert len(table) == 250 and not table["iso_a3"].duplicated().any()
    assert table.geometry.is_valid.all() and not table.geometry.is_empty.any()
    # Kenya is 580,367 km2 (land and water); the simplified outline stays within 2%
    assert abs(country_region("KEN").area_km2 / 580_367 - 1) < 0.02
