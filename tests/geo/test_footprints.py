"""Tests for open_buildings.geo.footprints: schema, exact CSV text, GeoParquet 1.1 metadata,
round trips, atomic writes and the manifest."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely
from affine import Affine
from openlocationcode import openlocationcode as olc

from open_buildings.errors import OutputExistsError
from open_buildings.geo.cells import cell_ids
from open_buildings.geo.footprints import (
    SCHEMA_COLUMNS,
    FileRecord,
    atomic_write,
    to_schema,
    write_csv_gz,
    write_geoparquet,
    write_manifest,
)
from open_buildings.geo.polygonize import polygonize
from open_buildings.geo.shard_read import read_footprints

# The published Open Buildings v3 row this format follows.
PUBLISHED_LAT, PUBLISHED_LON = 10.26189342, 11.20633394


def published_like() -> gpd.GeoDataFrame:
    """One row like the published one, with coordinates that survive 9-decimal WKT exactly."""
    ring = [
        (11.206357564, 10.261853623),
        (11.2063575, 10.2619),
        (11.2063, 10.2619),
        (11.206357564, 10.261853623),
    ]
    return gpd.GeoDataFrame(
        {
            "instance_id": [1],
            "latitude": [PUBLISHED_LAT],
            "longitude": [PUBLISHED_LON],
            "area_in_meters": [44.1204],
            "confidence": [0.8365],
        },
        geometry=[shapely.Polygon(ring)],
        crs="EPSG:4326",
    )


@pytest.fixture(scope="module")
def buildings() -> gpd.GeoDataFrame:
    """Footprints from polygonize: 40 rectangles (one with a hole) in UTM 37S."""
    rng = np.random.default_rng(1)
    labels = np.zeros((400, 400), dtype=np.int32)
    for label in range(1, 41):
        r, c = rng.integers(0, 380, size=2)
        h, w = rng.integers(4, 20, size=2)
        labels[r : r + h, c : c + w] = label
    labels[100:120, 100:120] = 41
    labels[108:112, 108:112] = 0
    grid = Affine(0.5, 0.0, 500_000.0, 0.0, -0.5, 9_000_000.0)
    frame = polygonize(labels, grid, "EPSG:32737", confidence=rng.random(42))
    if len(frame) < 30:
        raise RuntimeError("fixture too small")
    return frame


def csv_lines(path: Path) -> list[str]:
    return gzip.decompress(path.read_bytes()).decode("utf-8").splitlines()


def test_plus_code_of_the_published_row() -> None:
    assert olc.encode(PUBLISHED_LAT, PUBLISHED_LON, 12) == "7F2H7664+QG4P"
    assert to_schema(published_like())["full_plus_code"].tolist() == ["7F2H7664+QG4P"]


def test_to_schema_orders_columns_and_drops_extras(buildings: gpd.GeoDataFrame) -> None:
    rows = to_schema(buildings)
    assert list(rows.columns) == SCHEMA_COLUMNS
    assert rows.crs.to_epsg() == 4326
    assert rows["full_plus_code"].str.len().eq(13).all()  # 12 digits and the "+"
    with pytest.raises(ValueError, match="EPSG:4326"):
        to_schema(buildings.to_crs("EPSG:32737"))
    with pytest.raises(ValueError, match="area_in_meters"):
        to_schema(buildings.drop(columns="area_in_meters"))


def test_csv_text_matches_the_published_form(tmp_path: Path) -> None:
    record = write_csv_gz(published_like(), tmp_path / "x_buildings.csv.gz")
    assert csv_lines(record.path) == [
        "latitude,longitude,area_in_meters,confidence,geometry,full_plus_code",
        '10.26189342,11.20633394,44.1204,0.8365,"POLYGON((11.206357564 10.261853623, '
        '11.2063575 10.2619, 11.2063 10.2619, 11.206357564 10.261853623))",7F2H7664+QG4P',
    ]
    assert record.format == "csv.gz" and record.rows == 1
    assert record.bytes == record.path.stat().st_size
    assert record.sha256 == hashlib.sha256(record.path.read_bytes()).hexdigest()
    assert record.bbox == (11.2063, 10.261853623, 11.206357564, 10.2619)


def test_csv_hole_and_missing_confidence(tmp_path: Path) -> None:
    frame = published_like()
    frame["confidence"] = np.nan
    frame.geometry = [shapely.box(0, 0, 4, 4).difference(shapely.box(1, 1, 2, 2))]
    line = csv_lines(write_csv_gz(frame, tmp_path / "h.csv.gz").path)[1]
    assert ",0.8365," not in line and '44.1204,,"POLYGON((' in line
    assert "), (" in line  # rings separated like points
    back = read_footprints(tmp_path / "h.csv.gz")
    assert np.isnan(back["confidence"].iloc[0])
    assert shapely.equals(back.geometry.iloc[0], frame.geometry.iloc[0])


def test_csv_is_byte_identical_whatever_the_row_order(
    tmp_path: Path, buildings: gpd.GeoDataFrame
) -> None:
    first = write_csv_gz(buildings, tmp_path / "a.csv.gz")
    shuffled = buildings.sample(frac=1.0, random_state=3)
    second = write_csv_gz(shuffled, tmp_path / "b.csv.gz")
    assert first.path.read_bytes() == second.path.read_bytes()
    assert first.sha256 == second.sha256


def test_geoparquet_metadata_and_spatial_order(tmp_path: Path, buildings: gpd.GeoDataFrame) -> None:
    record = write_geoparquet(buildings, tmp_path / "x.parquet", row_group_size=10)
    metadata = pq.read_metadata(record.path)
    geo = json.loads(metadata.metadata[b"geo"])
    assert geo["version"] == "1.1.0"
    assert geo["primary_column"] == "geometry"
    assert geo["columns"]["geometry"]["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    assert metadata.num_row_groups == -(-len(buildings) // 10)
    table = pq.read_table(record.path)
    assert table.column_names == [*SCHEMA_COLUMNS, "bbox"]
    keys = cell_ids(table["longitude"].to_numpy(), table["latitude"].to_numpy())
    assert np.all(keys[:-1] <= keys[1:])
    assert record.rows == len(buildings) and record.format == "parquet"
    assert record.sha256 == hashlib.sha256(record.path.read_bytes()).hexdigest()


def test_csv_and_parquet_round_trip_to_the_same_rows(
    tmp_path: Path, buildings: gpd.GeoDataFrame
) -> None:
    csv = read_footprints(write_csv_gz(buildings, tmp_path / "s.csv.gz").path)
    parquet = read_footprints(write_geoparquet(buildings, tmp_path / "s.parquet").path)
    for frame in (csv, parquet):
        assert list(frame.columns) == SCHEMA_COLUMNS
        assert frame.crs.to_epsg() == 4326
        assert len(frame) == len(buildings)
    assert csv["full_plus_code"].tolist() == parquet["full_plus_code"].tolist()
    for column, tolerance in [
        ("latitude", 5e-9),
        ("longitude", 5e-9),
        ("area_in_meters", 5e-5),
        ("confidence", 5e-5),
    ]:
        np.testing.assert_allclose(csv[column], parquet[column], rtol=0, atol=tolerance)
    assert shapely.equals_exact(csv.geometry.values, parquet.geometry.values, 1e-9).all()
    assert csv.geometry.is_valid.all()
    # The parquet rows are the input rows exactly, reordered.
    expected = to_schema(buildings).set_index("full_plus_code").loc[parquet["full_plus_code"]]
    assert shapely.equals_exact(expected.geometry.values, parquet.geometry.values, 0).all()


def test_bbox_filter(tmp_path: Path, buildings: gpd.GeoDataFrame) -> None:
    write_csv_gz(buildings, tmp_path / "s.csv.gz")
    write_geoparquet(buildings, tmp_path / "s.parquet", row_group_size=5)
    minx, miny, maxx, maxy = buildings.total_bounds
    # Edges a quarter pixel (~1.1e-6 degrees) off the pixel lattice, so that no building's
    # bounds sit on them and WKT rounding cannot move a building across.
    box = (minx, miny, (minx + maxx) / 2 + 1.1e-6, (miny + maxy) / 2 + 1.1e-6)
    bounds = buildings.geometry.bounds
    inside = (
        (bounds.minx <= box[2])
        & (bounds.maxx >= box[0])
        & (bounds.miny <= box[3])
        & (bounds.maxy >= box[1])
    )
    if not 0 < inside.sum() < len(buildings):
        raise RuntimeError("the test box should split the fixture")
    for name in ("s.csv.gz", "s.parquet"):
        got = read_footprints(tmp_path / name, bbox=box)
        assert sorted(got["full_plus_code"]) == sorted(
            to_schema(buildings[inside])["full_plus_code"]
        )


def test_folder_reads_each_shard_once(tmp_path: Path, buildings: gpd.GeoDataFrame) -> None:
    half = len(buildings) // 2
    write_csv_gz(buildings.iloc[:half], tmp_path / "a_buildings.csv.gz")
    write_geoparquet(buildings.iloc[:half], tmp_path / "a_buildings.parquet")
    write_csv_gz(buildings.iloc[half:], tmp_path / "b_buildings.csv.gz")
    (tmp_path / "notes.txt").write_text("ignored")
    frame = read_footprints(tmp_path)
    assert len(frame) == len(buildings)
    assert sorted(frame["full_plus_code"]) == sorted(to_schema(buildings)["full_plus_code"])
    with pytest.raises(FileNotFoundError):
        read_footprints(tmp_path / "missing.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no"):
        read_footprints(tmp_path / "empty")
    with pytest.raises(ValueError, match="not a footprint shard"):
        read_footprints(tmp_path / "notes.txt")


def test_empty_frame_writes_and_reads(tmp_path: Path, buildings: gpd.GeoDataFrame) -> None:
    empty = buildings.iloc[:0]
    csv = write_csv_gz(empty, tmp_path / "e.csv.gz")
    parquet = write_geoparquet(empty, tmp_path / "e.parquet")
    assert csv.rows == parquet.rows == 0 and csv.bbox is None and parquet.bbox is None
    assert csv_lines(csv.path) == [",".join(SCHEMA_COLUMNS)]
    assert len(read_footprints(tmp_path / "e.parquet")) == 0


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def test_atomic_write_failure_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target) as handle:
            handle.write(b"partial")
            (temp,) = leftovers(tmp_path)
            assert temp.startswith(".out.bin.tmp-") and not target.exists()
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_never_clobbers_unless_asked(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        with atomic_write(target, mode="w") as handle:
            handle.write("new")
    assert target.read_text() == "old"
    with pytest.raises(FileExistsError):  # catchable as the builtin too
        write_csv_gz(published_like(), target)
    assert target.read_text() == "old" and leftovers(tmp_path) == []

    with atomic_write(target, overwrite=True, mode="w") as handle:
        handle.write("new")
    assert target.read_text() == "new" and leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(tmp_path / "y", mode="a"):
            pass


def test_failed_overwrite_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "keep.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, overwrite=True) as handle:
            handle.write(b"new")
            raise RuntimeError("crash before rename")
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_writers_overwrite_when_asked(tmp_path: Path, buildings: gpd.GeoDataFrame) -> None:
    path = tmp_path / "x.parquet"
    write_geoparquet(buildings.iloc[:3], path)
    with pytest.raises(OutputExistsError):
        write_geoparquet(buildings, path)
    assert len(read_footprints(path)) == 3
    write_geoparquet(buildings, path, overwrite=True)
    assert len(read_footprints(path)) == len(buildings)


def test_manifest(tmp_path: Path, buildings: gpd.GeoDataFrame) -> None:
    half = len(buildings) // 2
    records = [
        write_csv_gz(buildings.iloc[:half], tmp_path / "b.csv.gz"),
        write_geoparquet(buildings, tmp_path / "a.parquet"),
        write_csv_gz(buildings.iloc[half:], tmp_path / "d.csv.gz"),
        write_csv_gz(buildings.iloc[:0], tmp_path / "c.csv.gz"),
    ]
    model = {"name": "unet-demo", "sha256": "ab" * 32, "extra": "not copied"}
    path = write_manifest(tmp_path, records, code_version="0.1.0", model=model)
    assert path == tmp_path / "manifest.json"
    manifest = json.loads(path.read_text())
    assert set(manifest) == {
        "files",
        "total_rows",
        "rows_by_format",
        "bbox",
        "code_version",
        "model",
        "created_utc",
    }
    assert [f["name"] for f in manifest["files"]] == [
        "a.parquet",
        "b.csv.gz",
        "c.csv.gz",
        "d.csv.gz",
    ]
    first = manifest["files"][1]
    assert first == {
        "name": "b.csv.gz",
        "format": "csv.gz",
        "rows": half,
        "bytes": (tmp_path / "b.csv.gz").stat().st_size,
        "sha256": hashlib.sha256((tmp_path / "b.csv.gz").read_bytes()).hexdigest(),
        "bbox": list(records[0].bbox),
    }
    assert manifest["files"][2]["bbox"] is None
    assert manifest["total_rows"] == len(buildings)  # buildings, each format counted once
    assert manifest["rows_by_format"] == {"csv.gz": len(buildings), "parquet": len(buildings)}

    np.testing.assert_allclose(manifest["bbox"], buildings.total_bounds, rtol=0, atol=1e-12)
    assert manifest["code_version"] == "0.1.0"
    assert manifest["model"] == {"name": "unet-demo", "sha256": "ab" * 32}
    assert manifest["created_utc"].endswith("Z")
    assert leftovers(tmp_path) == []

    with pytest.raises(OutputExistsError):
        write_manifest(tmp_path, records, code_version="0.1.0", model=None)
    write_manifest(tmp_path, records, code_version="0.2.0", model=None, overwrite=True)
    assert json.loads(path.read_text())["model"] is None
    with pytest.raises(ValueError, match="sha256"):
        write_manifest(tmp_path, records, code_version="x", model={"name": "m"}, overwrite=True)
    outside = FileRecord(tmp_path.parent / "elsewhere.csv.gz", "csv.gz", 0, 0, "", None)
    with pytest.raises(ValueError, match="not inside"):
        write_manifest(tmp_path, [outside], code_version="x", model=None, overwrite=True)


def test_manifest_refuses_formats_that_disagree(
    tmp_path: Path, buildings: gpd.GeoDataFrame
) -> None:
    records = [
        write_csv_gz(buildings.iloc[:2], tmp_path / "b.csv.gz"),
        write_geoparquet(buildings, tmp_path / "a.parquet"),
    ]
    with pytest.raises(ValueError, match="different numbers of buildings"):
        write_manifest(tmp_path, records, code_version="0.1.0", model=None)
    assert not (tmp_path / "manifest.json").exists()
