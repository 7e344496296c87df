"""Tests for open_buildings.geo.footprint_stream: shard files written part by part hold the same
bytes as the files written from all rows at once, on real OSM footprints of Nairobi."""

from __future__ import annotations

import hashlib
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely
from shapely import affinity

from open_buildings.geo import footprint_stream
from open_buildings.geo.cells import cell_tokens
from open_buildings.geo.footprints import write_csv_gz, write_geoparquet

LABELS = Path(__file__).resolve().parents[1] / "data" / "labels" / "nairobi_ke.geojson"


@pytest.fixture(scope="module")
def buildings() -> gpd.GeoDataFrame:
    """The OSM buildings of two Nairobi tiles as footprint rows (centroid, area, a confidence)."""
    osm = gpd.read_file(LABELS)
    osm = osm[osm.geometry.geom_type == "Polygon"].reset_index(drop=True)
    utm = osm.to_crs(osm.estimate_utm_crs())
    centroids = utm.geometry.centroid.to_crs("EPSG:4326")
    rng = np.random.default_rng(0)
    return gpd.GeoDataFrame(
        {
            "latitude": centroids.y.to_numpy(),
            "longitude": centroids.x.to_numpy(),
            "area_in_meters": utm.geometry.area.to_numpy(),
            "confidence": rng.uniform(0.5, 1.0, len(osm)).round(4),
        },
        geometry=osm.geometry.to_numpy(),
        crs="EPSG:4326",
    )


def _parts(frame: gpd.GeoDataFrame, level: int, seed: int) -> list:
    """Cut ``frame`` by the S2 cell of each centroid (as tiles own buildings), shuffle the parts."""
    tokens = cell_tokens(frame["longitude"].to_numpy(), frame["latitude"].to_numpy(), level)
    parts = [frame[tokens == t].reset_index(drop=True) for t in np.unique(tokens)]
    order = np.random.default_rng(seed).permutation(len(parts))
    return [(footprint_stream.summarise(parts[i]), lambda p=parts[i]: p) for i in order]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(("level", "row_group"), [(14, 50_000), (17, 50_000), (17, 40)])
def test_parts_give_the_bytes_of_the_whole(buildings, tmp_path, level, row_group) -> None:
    whole = [
        write_csv_gz(buildings, tmp_path / "whole.csv.gz"),
        write_geoparquet(buildings, tmp_path / "whole.parquet", row_group_size=row_group),
    ]
    parts = _parts(buildings, level, seed=level)
    assert len(parts) > 1
    streamed = footprint_stream.write_parts(
        parts,
        {"csv.gz": tmp_path / "parts.csv.gz", "parquet": tmp_path / "parts.parquet"},
        row_group_size=row_group,
    )
    for a, b in zip(whole, streamed):
        assert (a.format, a.rows, a.bbox, a.sha256, a.bytes) == (
            b.format,
            b.rows,
            b.bbox,
            b.sha256,
            b.bytes,
        )
    assert _sha(tmp_path / "parts.parquet") == _sha(tmp_path / "whole.parquet")
    if row_group == 40:  # row groups are cut across parts exactly where the whole's are
        assert pq.ParquetFile(tmp_path / "parts.parquet").num_row_groups == -(-len(buildings) // 40)


def test_file_wide_geoparquet_metadata_covers_every_part(buildings, tmp_path) -> None:
    """A MultiPolygon in one part only: the file's geometry types and bbox are the union's."""
    frame = buildings.copy()
    twin = affinity.translate(frame.geometry.iloc[5], xoff=2e-5)
    frame.loc[5, "geometry"] = shapely.MultiPolygon([frame.geometry.iloc[5], twin])
    whole = write_geoparquet(frame, tmp_path / "whole.parquet")
    streamed = footprint_stream.write_parts(
        _parts(frame, 16, seed=1), {"parquet": tmp_path / "parts.parquet"}
    )
    assert streamed[0].sha256 == whole.sha256
    assert set(gpd.read_parquet(tmp_path / "parts.parquet").geom_type) == {
        "Polygon",
        "MultiPolygon",
    }


def test_overlapping_parts_are_refused(buildings, tmp_path) -> None:
    halves = [buildings.iloc[::2], buildings.iloc[1::2]]  # not cut by cell: ranges interleave
    with pytest.raises(footprint_stream.InterleavedPartsError):
        footprint_stream.write_parts(
            [(footprint_stream.summarise(h), lambda h=h: h) for h in halves],
            {"csv.gz": tmp_path / "x.csv.gz"},
        )
    assert list(tmp_path.iterdir()) == []


def test_a_failing_part_leaves_no_file_and_the_old_one_whole(buildings, tmp_path) -> None:
    target = {"csv.gz": tmp_path / "a.csv.gz", "parquet": tmp_path / "a.parquet"}
    before = footprint_stream.write_parts(_parts(buildings, 15, seed=0), target)
    parts = sorted(_parts(buildings, 15, seed=0), key=lambda p: p[0].first)

    def broken() -> gpd.GeoDataFrame:  # the last part: the disk went away while writing
        raise OSError("read error")

    with pytest.raises(OSError, match="read error"):
        footprint_stream.write_parts([*parts[:-1], (parts[-1][0], broken)], target, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv.gz", "a.parquet"]
    assert [_sha(target["csv.gz"]), _sha(target["parquet"])] == [r.sha256 for r in before]


def test_no_rows_write_no_file(tmp_path) -> None:
    assert footprint_stream.write_parts([], {"csv.gz": tmp_path / "e.csv.gz"}) == []
    assert list(tmp_path.iterdir()) == []
