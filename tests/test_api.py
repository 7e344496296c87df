"""``open_buildings.detect`` and ``open_buildings.download`` return what the commands write."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import shapely

import open_buildings
from open_buildings.commands import download as ob_download
from open_buildings.commands import infer as ob_infer
from open_buildings.errors import RegionError
from open_buildings.geo.shard_read import read_footprints

BOX = (36.9070, -1.3058, 36.9078, -1.3049)  # a corner of the embedded sample


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ob-infer with its defaults (the shipped model) on BOX."""
    folder = tmp_path_factory.mktemp("cli")
    region = folder / "box.geojson"
    region.write_text(json.dumps({"type": "Polygon", "coordinates": [
        [[BOX[0], BOX[1]], [BOX[2], BOX[1]], [BOX[2], BOX[3]], [BOX[0], BOX[3]], [BOX[0], BOX[1]]]
    ]}))  # fmt: skip
    assert ob_infer.main([str(region), "--out", str(folder / "out"), "--no-progress"]) == 0
    return folder


def _rows(frame) -> list[tuple]:
    return sorted(zip(frame["full_plus_code"], frame.geometry.to_wkb(), strict=True))


def test_detect_returns_what_ob_infer_writes(cli_run: Path) -> None:
    frame = open_buildings.detect(BOX)  # a box; a GeoJSON file or object works the same
    written = read_footprints(cli_run / "out")
    assert 0 < len(frame) == len(written)
    assert list(frame.columns) == list(written.columns) and frame.crs.to_epsg() == 4326
    assert _rows(frame) == _rows(written)
    again = open_buildings.detect(str(cli_run / "box.geojson"), out=cli_run / "api_out")
    assert _rows(again) == _rows(written) and (cli_run / "api_out" / "manifest.json").exists()


def test_download_returns_what_ob_download_writes(cli_run: Path, tmp_path: Path) -> None:
    inner = (36.9072, -1.3056, 36.9076, -1.3051)
    frame = open_buildings.download(inner, cli_run / "out", min_confidence=0.9)
    region = tmp_path / "inner.geojson"
    region.write_text(json.dumps(shapely.geometry.mapping(shapely.box(*inner))))
    out = tmp_path / "inner.csv.gz"
    argv = [str(region), "--source", str(cli_run / "out"), "--out", str(out)]
    assert ob_download.main([*argv, "--min-confidence", "0.9"]) == 0
    assert sorted(frame["full_plus_code"]) == sorted(pd.read_csv(out)["full_plus_code"])
    assert (frame["confidence"] >= 0.9).all()


def test_the_api_raises_the_projects_errors() -> None:
    with pytest.raises(RegionError, match="north <= 90"):
        open_buildings.detect((36.9, -1.3, 36.91, 95.0))
    with pytest.raises(AttributeError):
        open_buildings.no_such_thing  # noqa: B018
