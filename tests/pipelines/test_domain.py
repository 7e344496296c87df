"""The unfamiliar-imagery warning: cheap tile statistics against the model's training ranges."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from open_buildings.commands import infer as ob_infer
from open_buildings.geo.imagery import open_imagery
from open_buildings.geo.shard_read import read_footprints
from open_buildings.models.checkpoint import read_input_ranges
from open_buildings.pipelines import domain, sinks
from open_buildings.resources import resource
from tests.pipelines.conftest import SAMPLE, write_region

DATA = Path(__file__).resolve().parents[1] / "data" / "imagery"
DEFAULT = Path(str(resource("models", "default", "weights.safetensors")))


def test_tile_stats_by_hand() -> None:
    rgb = np.zeros((3, 2, 2), np.uint8)
    rgb[0] = 255  # pure red: band means 1, 0, 0; every pixel's bands spread by 1
    valid = np.array([[True, True], [True, False]])
    logits = np.full((2, 2, 2), -5.0)
    logits[0, 0, 0] = 5.0  # one of the three valid pixels is building
    stats = domain.tile_stats(rgb, valid, logits)
    assert stats["mean_1"] == 1.0 and stats["mean_2"] == stats["mean_3"] == 0.0
    assert stats["std_1"] == 0.0 and stats["colourfulness"] == 1.0
    assert stats["building_fraction"] == pytest.approx(1 / 3)
    assert domain.tile_stats(rgb, np.zeros((2, 2), bool), logits) == {}


def test_ranges_are_widened_and_outside_names_what_is_out() -> None:
    rows = [dict.fromkeys(domain.STATS, 0.2), dict.fromkeys(domain.STATS, 0.6)]
    ranges = domain.input_ranges(rows)
    assert ranges["mean_1"] == pytest.approx([0.0, 0.8])  # half the 0.4 span on each side
    tight = domain.input_ranges([dict.fromkeys(domain.STATS, 0.5)] * 2)
    assert tight["colourfulness"] == pytest.approx([0.48, 0.52])  # at least MIN_MARGIN
    inside = dict.fromkeys(domain.STATS, 0.5)
    assert domain.outside(inside, ranges) == []
    grey = inside | {"colourfulness": -0.5, "std_2": 0.9}
    # the floor of a never-negative statistic stops halfway to 0 (0.2 -> 0.1)
    assert domain.outside(grey, ranges) == ["std_2 0.900 > 0.800", "colourfulness -0.500 < 0.100"]
    with pytest.raises(ValueError, match="no tile"):
        domain.input_ranges([{}])


def test_a_warning_kept_in_the_work_folder_reads_back(tmp_path: Path) -> None:
    path = sinks.write_domain_marker("182f13a9", ["colourfulness 0.000 < 0.034"], tmp_path)
    assert path == sinks.domain_path(tmp_path, "182f13a9")
    assert sinks.read_domain_marker(path) == ("182f13a9", ["colourfulness 0.000 < 0.034"])


def _run(imagery: Path, out: Path, tmp_path: Path) -> dict:
    bounds = open_imagery(str(imagery)).bounds_lonlat()
    w, s, e, n = bounds
    mx, my = (e - w) / 4, (n - s) / 4
    region = write_region(tmp_path / f"{out.name}.geojson", (w + mx, s + my, e - mx, n - my))
    argv = [str(region), "--imagery", str(imagery), "--out", str(out), "--no-progress"]
    assert ob_infer.main(argv) == 0
    return json.loads((out / "manifest.json").read_text())["domain"]


def test_the_default_model_carries_the_ranges_of_its_training_towns() -> None:
    ranges = read_input_ranges(DEFAULT)
    # the 9 training tiles with imagery in Banepa, Zanzibar and Nairobi (validation tiles excluded)
    assert ranges is not None and "banepa" in ranges["measured_on"] and ranges["tiles"] >= 9
    assert set(ranges["ranges"]) == set(domain.STATS)


def test_no_warning_on_the_training_town_or_the_sample(tmp_path: Path, capsys) -> None:
    for imagery, name in ((DATA / "banepa", "banepa"), (SAMPLE / "items.json", "sample")):
        found = _run(imagery, tmp_path / name, tmp_path)
        assert found["checked"] is True and found["tiles"] == {}, name
    assert "do not look like" not in capsys.readouterr().err


def _grey_copy(folder: Path) -> Path:
    """The sample's real Nairobi imagery made grey and copied to three bands."""
    with rasterio.open(SAMPLE / "nairobi_a.tif") as src:
        profile, data = src.profile, src.read()
    grey = np.repeat(data.astype(np.float32).mean(0, keepdims=True).round(), 3, 0)
    path = folder / "grey.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(grey.astype(np.uint8))
    return path


def test_grey_imagery_copied_to_three_bands_is_named(tmp_path: Path, capsys) -> None:
    grey_tif = _grey_copy(tmp_path)
    out = tmp_path / "grey"
    found = _run(grey_tif, out, tmp_path)
    assert found["tiles"] and all(
        any(r.startswith("colourfulness 0.000 <") for r in reasons)
        for reasons in found["tiles"].values()
    )
    err = capsys.readouterr().err
    assert "do not look like the imagery the model was trained on" in err
    assert all(tile in err for tile in found["tiles"])
    assert len(read_footprints(out)) > 0  # warned about, never dropped


def test_snow_and_forest_imagery_is_named(tmp_path: Path, capsys) -> None:
    found = _run(DATA / "rasterio_cogeo_0.6m_no_buildings.tif", tmp_path / "snow", tmp_path)
    reasons = [r for rs in found["tiles"].values() for r in rs]
    assert found["tiles"] and any(r.startswith("std_") for r in reasons)  # far more contrast
    assert "warning:" in capsys.readouterr().err


def test_a_resumed_run_still_names_the_tiles_finished_before_the_interruption(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with rasterio.open(SAMPLE / "nairobi_a.tif") as src:
        profile, data = src.profile, src.read()
    grey_tif = tmp_path / "grey.tif"
    with rasterio.open(grey_tif, "w", **profile) as dst:
        dst.write(
            np.repeat(data.astype(np.float32).mean(0, keepdims=True).round(), 3, 0).astype(np.uint8)
        )
    clean = _run(grey_tif, tmp_path / "clean", tmp_path)
    assert clean["tiles"]

    real = sinks.write_shard

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("worker lost while writing shards (simulated)")

    monkeypatch.setattr(sinks, "write_shard", crash)
    out = tmp_path / "resumed"
    w, s, e, n = open_imagery(str(grey_tif)).bounds_lonlat()
    mx, my = (e - w) / 4, (n - s) / 4
    region = write_region(tmp_path / "again.geojson", (w + mx, s + my, e - mx, n - my))
    argv = [str(region), "--imagery", str(grey_tif), "--out", str(out), "--no-progress"]
    assert ob_infer.main(argv) == 1  # every tile finished; no shard written
    assert sorted(p.stem for p in (out / ".work" / "domain").glob("*.json")) == sorted(
        clean["tiles"]
    )
    monkeypatch.setattr(sinks, "write_shard", real)
    assert ob_infer.main([*argv, "--resume"]) == 0
    assert json.loads((out / "manifest.json").read_text())["domain"]["tiles"] == clean["tiles"]


def test_a_spread_never_reaches_zero_so_a_grey_image_is_always_outside() -> None:
    rows = [dict.fromkeys(domain.STATS, 0.3), dict.fromkeys(domain.STATS, 0.3)]
    rows[0]["colourfulness"], rows[1]["colourfulness"] = 0.03, 0.25  # one greyish training tile
    ranges = domain.input_ranges(rows)
    assert ranges["colourfulness"][0] == 0.015  # halfway to 0, not 0.03 - 0.11
    grey = dict(rows[0], colourfulness=0.0)
    assert any(r.startswith("colourfulness 0.000 <") for r in domain.outside(grey, ranges))
