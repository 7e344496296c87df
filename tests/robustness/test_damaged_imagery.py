"""Damaged copies of real imagery end in a clear error or a dead letter, never in garbage pixels.

Issue #14 items 2 (a truncated PNG decoded as garbage), 3 (corrupt JPEG data used with only a
GDAL log line) and 7 (one unreadable file refused a whole mosaic, blaming the format).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from damage import (  # noqa: F401 - tiny_model: a fixture
    BANEPA,
    DATA,
    NAIROBI,
    as_real_png,
    copy_folder,
    garble,
    offsets,
    tiny_model,
    truncate,
)

from open_buildings.errors import ImageryError
from open_buildings.geo.grid import GridSpec, cover
from open_buildings.geo.imagery import RasterSource, XYZSource, open_imagery
from open_buildings.geo.regions import region_from_bbox

TILE = "OAM-315878-264050-19"


def _tiles(source) -> list:
    region = region_from_bbox(*source.bounds_lonlat())
    return list(cover(region.geometry, GridSpec(level=16)))


def _read_all(source) -> list:
    return [source.read(tile.grid) for tile in _tiles(source)]


def _png_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "png"
    folder.mkdir()
    for src in sorted(NAIROBI.glob("OAM-*.png")):
        as_real_png(src, folder / src.name)
    return folder


def test_a_truncated_png_tile_is_an_error_not_garbage(tmp_path: Path) -> None:
    folder = _png_folder(tmp_path)
    assert all(t.valid.any() for t in _read_all(XYZSource(folder)))  # the intact copy reads
    victim = folder / f"{TILE}.png"
    truncate(victim, victim.stat().st_size // 2)  # GDAL alone decodes this without a word
    with pytest.raises(ImageryError, match=rf"{TILE}\.png is a damaged PNG \(Truncated"):
        _read_all(XYZSource(folder))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_png_with_flipped_bytes_is_an_error(tmp_path: Path, seed: int) -> None:
    folder = _png_folder(tmp_path)
    garble(folder / f"{TILE}.png", count=20, seed=seed, start=64)  # past the header: pixel data
    with pytest.raises(ImageryError, match=rf"{TILE}\.png"):
        _read_all(XYZSource(folder))


def test_corrupt_jpeg_data_is_an_error_not_a_log_line(tmp_path: Path) -> None:
    # The case: 2,000 garbled bytes in a real tile's entropy-coded data. libjpeg only
    # warns ("Corrupt JPEG data"), and the tile lost buildings without a dead letter.
    folder = copy_folder(NAIROBI, tmp_path / "jpeg")
    garble(folder / f"{TILE}.png", count=2000, seed=0, start=1000)
    with pytest.raises(ImageryError, match=rf"{TILE}\.png.*(Corrupt JPEG|libjpeg)"):
        _read_all(XYZSource(folder))


@pytest.mark.parametrize(
    ("fixture", "name"), [(BANEPA, "OAM-386690-220241-19.tif"), (NAIROBI, f"{TILE}.png")]
)
def test_truncation_anywhere_is_an_error(tmp_path: Path, fixture: Path, name: str) -> None:
    for k, at in enumerate(offsets(fixture / name, count=8, seed=7)):
        folder = copy_folder(fixture, tmp_path / f"cut{k}")
        truncate(folder / name, at)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a mosaic's "skipped a file" warning
            with pytest.raises(ImageryError, match=name.replace(".", r"\.")):
                _read_all(open_imagery(str(folder)))


SINGLE_FILES = [
    DATA / "spacenet2_vegas_400px_uint16.tif",  # uint16, tiled deflate GeoTIFF
    DATA / "rasterio_cogeo_0.6m_no_buildings.tif",  # JPEG-compressed COG with overviews
    Path(__file__).resolve().parents[2] / "geo" / "sample" / "nairobi_a.tif",  # the demo's COG
]


@pytest.mark.parametrize("original", SINGLE_FILES, ids=lambda p: p.name)
def test_a_truncated_geotiff_is_an_error_never_garbage(tmp_path: Path, original: Path) -> None:
    tiles = _tiles(open_imagery(str(original)))
    for k, at in enumerate(offsets(original, count=6, seed=11)):
        path = tmp_path / f"cut{k}_{original.name}"
        path.write_bytes(original.read_bytes()[:at])
        with pytest.raises(ImageryError, match=path.name):
            source = open_imagery(str(path))
            for tile in tiles:
                source.read(tile.grid)


def test_a_damaged_file_is_not_blamed_on_its_format(tmp_path: Path) -> None:
    path = tmp_path / "cut.tif"
    path.write_bytes((BANEPA / "OAM-386690-220241-19.tif").read_bytes()[:300])
    with pytest.raises(ImageryError) as caught:
        RasterSource([path])
    message = str(caught.value)
    assert "looks like a JPEG file but GDAL cannot open it" in message
    assert "truncated or damaged" in message
    assert "not in an allowed raster format" not in message


def test_one_unreadable_file_in_a_mosaic_is_skipped_and_its_tiles_dead_letter(
    tmp_path: Path,
) -> None:
    intact = RasterSource(sorted(BANEPA.glob("*.tif")))
    tiles = _tiles(intact)
    folder = copy_folder(BANEPA, tmp_path / "mosaic")
    victim = folder / "OAM-386691-220242-19.tif"
    truncate(victim, 300)
    with pytest.warns(UserWarning, match=r"skipped 1 of 4 imagery files.*OAM-386691-220242-19"):
        source = open_imagery(str(folder))
    assert [Path(p).name for p, _ in source.skipped] == [victim.name]
    outcomes = []
    for tile in tiles:
        want = intact.read(tile.grid)
        try:
            got = source.read(tile.grid)
        except ImageryError as exc:
            assert "could not be opened (OAM-386691-220242-19.tif)" in str(exc)
            assert "--resume" in str(exc)
            outcomes.append("dead")
            continue
        # A tile that reads is whole, and identical to the intact mosaic's.
        assert got.valid.all()
        np.testing.assert_array_equal(got.rgb, want.rgb)
        outcomes.append("read")
    assert "dead" in outcomes


def test_a_mosaic_where_no_file_opens_is_a_clear_error(tmp_path: Path) -> None:
    folder = copy_folder(BANEPA, tmp_path / "mosaic")
    for path in folder.glob("*.tif"):
        truncate(path, 200)
    with pytest.raises(ImageryError, match="none of the 4 imagery files could be opened"):
        open_imagery(str(folder))


def test_ob_infer_dead_letters_the_damaged_tile_and_finishes_the_rest(
    tmp_path: Path, tiny_model: Path, capsys
) -> None:
    from open_buildings.commands import infer as ob_infer
    from open_buildings.commands.evaluate_model import write_bbox_region

    folder = _png_folder(tmp_path)
    truncate(folder / f"{TILE}.png", 5000)
    region = tmp_path / "region.geojson"
    write_bbox_region(XYZSource(NAIROBI).bounds_lonlat(), region)
    out = tmp_path / "out"
    argv = [str(region), "--imagery", str(folder), "--model", str(tiny_model), "--out", str(out)]
    assert ob_infer.main([*argv, "--tile-level", "17", "--no-progress"]) == 0
    letters = [json.loads(line) for line in (out / "dead_letter.jsonl").read_text().splitlines()]
    assert letters and all(f"{TILE}.png is a damaged PNG" in d["reason"] for d in letters)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"], "the tiles that could be read were written"
    assert f"dead letters: {len(letters)} tile(s) failed" in capsys.readouterr().out
