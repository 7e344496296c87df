"""GeoParquet CRS metadata comes from one fixed source (issue #14 item 5).

A resumed run wrote ``datum`` where an uninterrupted one wrote ``datum_ensemble``: geopandas
writes ``crs.to_json_dict()``, whose form depends on how the CRS object was made (a WKT from GDAL
gives ``datum``) and on the PROJ database. These tests make pyproj answer differently and check
that the bytes do not change.
"""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import pyarrow.parquet as pq
import pyproj
import pytest
import rasterio
import shapely

from open_buildings.geo.footprints import write_geoparquet
from open_buildings.geo.parquet_crs import WGS84_PROJJSON

GDAL_WKT1 = rasterio.crs.CRS.from_epsg(4326).to_wkt(version="WKT1_GDAL")


def _frame() -> gpd.GeoDataFrame:
    squares = [shapely.box(36.9 + i * 1e-4, -1.31, 36.90005 + i * 1e-4, -1.30995) for i in range(3)]
    frame = gpd.GeoDataFrame(geometry=squares, crs="EPSG:4326")
    centres = shapely.centroid(frame.geometry.to_numpy())
    frame["latitude"], frame["longitude"] = shapely.get_y(centres), shapely.get_x(centres)
    frame["area_in_meters"] = 30.0
    frame["confidence"] = [0.9, 0.8, 0.7]
    return frame


def _crs_written(path: Path) -> dict:
    geo = json.loads(pq.read_schema(path).metadata[b"geo"])
    return geo["columns"]["geometry"]["crs"]


def test_the_bytes_do_not_depend_on_what_pyproj_answers(tmp_path: Path, monkeypatch) -> None:
    first = tmp_path / "a.parquet"
    write_geoparquet(_frame(), first)
    # Another PROJ state: "EPSG:4326" now exports as GDAL's WKT1 reads, with a plain datum.
    gdal_form = pyproj.CRS.from_wkt(GDAL_WKT1).to_json_dict()
    assert "datum" in gdal_form and "datum_ensemble" not in gdal_form
    monkeypatch.setattr(pyproj.CRS, "to_json_dict", lambda self: dict(gdal_form))
    second = tmp_path / "b.parquet"
    write_geoparquet(_frame(), second)
    assert first.read_bytes() == second.read_bytes()
    assert _crs_written(second) == WGS84_PROJJSON


def test_a_frame_whose_crs_came_from_gdal_writes_the_same_bytes(tmp_path: Path) -> None:
    plain, from_gdal = tmp_path / "plain.parquet", tmp_path / "gdal.parquet"
    write_geoparquet(_frame(), plain)
    write_geoparquet(
        _frame().set_crs(pyproj.CRS.from_wkt(GDAL_WKT1), allow_override=True), from_gdal
    )
    assert plain.read_bytes() == from_gdal.read_bytes()


def test_the_fixed_crs_is_epsg_4326_and_readers_see_it(tmp_path: Path) -> None:
    assert pyproj.CRS.from_json_dict(WGS84_PROJJSON) == pyproj.CRS("EPSG:4326")
    path = tmp_path / "x.parquet"
    write_geoparquet(_frame(), path, row_group_size=2)
    back = gpd.read_parquet(path)
    assert back.crs.to_epsg() == 4326 and len(back) == 3
    assert pq.ParquetFile(path).metadata.num_row_groups == 2


@pytest.mark.parametrize("row_group_size", [0, -1])
def test_row_group_size_is_still_checked(tmp_path: Path, row_group_size: int) -> None:
    with pytest.raises(ValueError, match="row_group_size"):
        write_geoparquet(_frame(), tmp_path / "x.parquet", row_group_size=row_group_size)
