"""The README's "Querying the footprints" snippets, run as written on a real ob-infer output."""

from __future__ import annotations

import re
from pathlib import Path

import geopandas as gpd
import pytest

from open_buildings.commands import infer as ob_infer

ROOT = Path(__file__).resolve().parents[1]


def _snippets() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Querying the footprints", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("readme") / "out"
    assert ob_infer.main(["--out", str(folder), "--no-progress"]) == 0  # the demo's run
    return folder


def test_the_readme_has_three_query_snippets() -> None:
    assert len(_snippets()) == 3


def test_geopandas_bbox_snippet(out: Path, capsys) -> None:
    exec(_snippets()[0], {"OUT": str(out)})  # noqa: S102 - the README's own code
    count = int(capsys.readouterr().out.split()[0])
    whole = gpd.read_parquet(out / "182f_buildings.parquet")
    assert 0 < count < len(whole)


def test_duckdb_spatial_snippet(out: Path) -> None:
    scope = {"OUT": str(out)}
    exec(_snippets()[1], scope)  # noqa: S102
    top = scope["big"]
    whole = gpd.read_parquet(out / "182f_buildings.parquet").set_index("full_plus_code")
    assert len(top) == 5
    for code, m2 in top:
        # the spheroid area agrees with the v3 area_in_meters (computed in UTM) within 1%
        assert m2 == pytest.approx(whole.loc[code, "area_in_meters"], rel=0.01)
        assert whole.loc[code, "confidence"] >= 0.9


def test_geopackage_and_flatgeobuf_snippet(out: Path) -> None:
    exec(_snippets()[2], {"OUT": str(out)})  # noqa: S102
    whole = gpd.read_parquet(out / "182f_buildings.parquet")
    for name in ("buildings.gpkg", "buildings.fgb"):
        back = gpd.read_file(out / name)
        assert len(back) == len(whole) and back.crs.to_epsg() == 4326
