"""What ob-infer says and returns when tiles fail, when it resumes, and on odd pixel sizes.

Issue #14 items 11 (exit 0 when every tile failed), 12 (a resumed run's summary counted only the
tiles it recomputed) and 13 (absurd pixel sizes gave 0 buildings without a warning).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import rasterio
from affine import Affine
from damage import NAIROBI, as_real_png, tiny_model, truncate  # noqa: F401 - tiny_model: a fixture

from open_buildings.commands import infer as ob_infer
from open_buildings.commands.evaluate_model import write_bbox_region
from open_buildings.geo.imagery import RasterSource, XYZSource
from open_buildings.pipelines import sinks

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_A = ROOT / "geo" / "sample" / "nairobi_a.tif"


@pytest.fixture
def png_tiles(tmp_path: Path) -> Path:
    """The four real Nairobi tiles re-encoded as real PNGs, with a region over them."""
    folder = tmp_path / "tiles"
    folder.mkdir()
    for src in sorted(NAIROBI.glob("OAM-*.png")):
        as_real_png(src, folder / src.name)
    write_bbox_region(XYZSource(NAIROBI).bounds_lonlat(), tmp_path / "region.geojson")
    return folder


def _argv(tmp_path: Path, imagery: Path, model: Path, out: str, *extra: str) -> list[str]:
    region = str(tmp_path / "region.geojson")
    return [region, "--imagery", str(imagery), "--model", str(model), "--out", str(tmp_path / out),
            "--tile-level", "17", "--no-progress", *extra]  # fmt: skip


def _line(text: str, start: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(start))


def test_every_tile_failing_is_exit_2_and_says_so(
    tmp_path: Path, png_tiles: Path, tiny_model: Path, capsys
) -> None:
    for tile in png_tiles.iterdir():
        truncate(tile, 4000)
    assert ob_infer.main(_argv(tmp_path, png_tiles, tiny_model, "out")) == 2
    err = capsys.readouterr().err
    assert "no tile could be processed: all 12 failed" in err
    assert "damaged PNG" in err and "--resume" in err


def test_some_tiles_failing_warns_and_max_failed_fraction_makes_it_strict(
    tmp_path: Path, png_tiles: Path, tiny_model: Path, capsys
) -> None:
    clean = _argv(tmp_path, png_tiles, tiny_model, "clean")
    assert ob_infer.main(clean) == 0
    clean_area = _line(capsys.readouterr().out, "area:")
    victim = png_tiles / "OAM-315878-264050-19.png"
    intact = victim.read_bytes()
    truncate(victim, 4000)
    assert ob_infer.main(_argv(tmp_path, png_tiles, tiny_model, "some")) == 0
    err = capsys.readouterr().err
    assert "warning: 9 of 12 tiles failed (75.0%)" in err
    strict = _argv(tmp_path, png_tiles, tiny_model, "strict", "--max-failed-fraction", "0.5")
    assert ob_infer.main(strict) == 2
    assert "more than --max-failed-fraction 0.5" in capsys.readouterr().err
    # The failed tiles stay in the work folder: fixed and resumed, only they are recomputed,
    # and the whole job is reported and written as if nothing had failed.
    victim.write_bytes(intact)
    assert ob_infer.main([*_argv(tmp_path, png_tiles, tiny_model, "some"), "--resume"]) == 0
    assert _line(capsys.readouterr().out, "area:") == clean_area
    for name in ("clean", "some"):
        assert not (tmp_path / name / sinks.DEAD_LETTER_NAME).exists()
    digests = [
        {p.name: p.read_bytes() for p in (tmp_path / n).glob("*_buildings.*")}
        for n in ("clean", "some")
    ]
    assert digests[0] == digests[1] and digests[0]


def test_a_resumed_run_reports_the_whole_job(
    tmp_path: Path, png_tiles: Path, tiny_model: Path, monkeypatch, capsys
) -> None:
    assert ob_infer.main(_argv(tmp_path, png_tiles, tiny_model, "clean")) == 0
    printed = capsys.readouterr().out
    expected = [_line(printed, k) for k in ("area:", "buildings found:", "outside the region:")]
    assert "0.000 km2 of tiles" not in expected[0]

    def power_cut(*args, **kwargs):
        raise RuntimeError("power cut (simulated)")

    real = sinks.write_shard
    monkeypatch.setattr(sinks, "write_shard", power_cut)  # every tile finished, no shard written
    assert ob_infer.main(_argv(tmp_path, png_tiles, tiny_model, "cut")) == 1
    monkeypatch.setattr(sinks, "write_shard", real)
    capsys.readouterr()
    assert ob_infer.main([*_argv(tmp_path, png_tiles, tiny_model, "cut"), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert [_line(printed, k) for k in ("area:", "buildings found:", "outside the region:")] == (
        expected
    )


def _with_pixel_size(tmp_path: Path, size: float) -> Path:
    path = tmp_path / f"px_{size:g}.tif"
    shutil.copy(SAMPLE_A, path)
    with rasterio.open(path, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as ds:
        t = ds.transform
        ds.transform = Affine(size, 0.0, t.c, 0.0, -size, t.f)
    return path


@pytest.mark.parametrize("size", [1e-6, 0.05, 3.0, 1000.0])
def test_absurd_pixel_sizes_are_warned_about_naming_the_file(tmp_path: Path, size: float) -> None:
    path = _with_pixel_size(tmp_path, size)
    with pytest.warns(UserWarning, match=rf"far from the 50 cm .*{path.name}"):
        RasterSource([path])


def test_the_sample_and_the_training_imagery_are_not_warned_about(recwarn) -> None:
    RasterSource(sorted((ROOT / "geo" / "sample").glob("*.tif")))
    RasterSource(sorted((NAIROBI.parent / "banepa").glob("*.tif")))  # 0.13 m, under 4x finer
    assert not [w for w in recwarn if "far from the 50 cm" in str(w.message)]
