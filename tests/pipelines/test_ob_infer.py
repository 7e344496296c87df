"""``ob-infer``: refusals, the summary, and an interrupted run that resumes to identical files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import shapely
from conftest import (
    SAMPLE,
    SMALL_BOX,
    TEST_TILE_LEVEL,
    StopBuildError,
    manifest_files,
    output_digests,
    write_region,
)

from open_buildings.commands import infer as ob_infer
from open_buildings.pipelines import sinks


def _argv(region: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return [
        str(region),
        "--model",
        str(model),
        "--out",
        str(out),
        "--tile-level",
        str(TEST_TILE_LEVEL),
        "--no-progress",
        *extra,
    ]


def test_interrupted_run_resumes_to_identical_files(
    clean_run: dict,
    small_region: Path,
    tiny_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    # The first run dies while writing shards: every tile is finished, no shard is complete.
    real = sinks.write_shard
    grouped: list = []  # what each shard's GroupByKey carried to the writer

    def crash(token, parts, *args, **kwargs):
        grouped.extend(parts)
        raise RuntimeError("power cut (simulated)")

    def recorded(token, parts, *args, **kwargs):
        parts = list(parts)
        grouped.extend(parts)
        return real(token, parts, *args, **kwargs)

    monkeypatch.setattr(sinks, "write_shard", crash)
    assert ob_infer.main(_argv(small_region, tiny_checkpoint, out)) == 1
    assert "--resume" in capsys.readouterr().err
    partials = sorted((out / ob_infer.WORK_DIR / "tiles").glob("*.parquet"))
    assert len(partials) == 4 and not (out / "manifest.json").exists()
    # ... and suppose it had died earlier still: two tiles never finished.
    for partial in partials[:2]:
        partial.unlink()
    # the groups hold each tile's partial file's path, not its footprints
    assert grouped and all(p.rows is None and Path(p.path) in partials for p in grouped)
    grouped.clear()
    monkeypatch.setattr(sinks, "write_shard", recorded)

    # without --resume or --overwrite the folder is refused
    assert ob_infer.main(_argv(small_region, tiny_checkpoint, out)) == 2
    assert "not empty" in capsys.readouterr().err

    assert ob_infer.main(_argv(small_region, tiny_checkpoint, out, "--resume")) == 0
    # resumed tiles and fresh ones alike
    assert {Path(p.path).name for p in grouped} >= {p.name for p in partials[2:]}
    assert all(p.rows is None for p in grouped)
    printed = capsys.readouterr().out
    assert output_digests(out) == output_digests(clean_run["out"])
    assert manifest_files(out) == manifest_files(clean_run["out"])
    rows = manifest_files(out)[0]["rows"]
    assert f"buildings found: {rows:,}" in printed
    assert "km2" in printed and "time:" in printed and "dead letters: 0" in printed
    assert str(out.resolve()) in printed
    assert not (out / ob_infer.WORK_DIR).exists()  # cleaned up after success

    # --overwrite replaces the run's own files, and only those
    (out / "notes.txt").write_text("mine")
    (out / ".0000_buildings.parquet.tmp-0123456789ab").write_bytes(b"PAR1")  # a killed write's
    assert ob_infer.main(_argv(small_region, tiny_checkpoint, out, "--overwrite")) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert output_digests(out) == {
        **output_digests(clean_run["out"]),
        "notes.txt": output_digests(out)["notes.txt"],
    }


def test_a_region_without_imagery_says_where_the_imagery_is(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    region = write_region(tmp_path / "paris.geojson", (2.34, 48.85, 2.35, 48.86))
    assert ob_infer.main(_argv(region, tiny_checkpoint, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "does not cover the region" in err and "lon 36.89" in err and "lat -1.31" in err
    assert not (tmp_path / "out").exists()


def test_a_missing_model_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert ob_infer.main(["--model", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert "nope.safetensors" in err and ".safetensors checkpoint" in err


def test_no_default_model_yet_tells_which_model_to_pass(tmp_path, capsys, monkeypatch) -> None:
    import open_buildings.resources as resources

    # An installation whose model zoo is empty (e.g. a slimmed wheel).
    empty_zoo = tmp_path / "zoo"
    empty_zoo.mkdir()
    real = resources.resource
    monkeypatch.setattr(
        resources,
        "resource",
        lambda kind, *parts: empty_zoo.joinpath(*parts) if kind == "models" else real(kind, *parts),
    )
    assert ob_infer.main(["--out", str(tmp_path / "out")]) == 2
    assert "--model PATH" in capsys.readouterr().err


def test_the_gpu_is_checked_before_anything_runs(tiny_checkpoint, small_region, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    argv = _argv(small_region, tiny_checkpoint, tmp_path / "out", "--device", "cuda")
    assert ob_infer.main(argv) == 2
    assert "sees none" in capsys.readouterr().err


@pytest.mark.slow
def test_two_worker_processes_give_the_same_files(
    clean_run: dict, small_region: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert ob_infer.main(_argv(small_region, tiny_checkpoint, out, "--workers", "2")) == 0
    assert output_digests(out) == output_digests(clean_run["out"])
    assert json.loads((out / "manifest.json").read_text())["total_rows"] > 0


def test_any_config_key_can_be_set_with_o(
    small_region: Path, tiny_checkpoint: Path, tmp_path: Path, ob_infer_configs: list, capsys
) -> None:
    seen = ob_infer_configs
    argv = _argv(small_region, tiny_checkpoint, tmp_path / "out")
    with pytest.raises(StopBuildError):
        ob_infer.main([*argv, "-o", "grid.margin_m=16", "-o", "postprocess.simplify_m=0.25"])
    assert seen[-1].grid.margin_m == 16.0 and seen[-1].postprocess.simplify_m == 0.25
    assert seen[-1].grid.tile_level == TEST_TILE_LEVEL  # the flags' values stay
    assert ob_infer.main([*argv, "-o", "grid.margn_m=16"]) == 2
    assert "grid.margn_m: unknown key" in capsys.readouterr().err


def _written(out: Path) -> tuple[dict, object]:
    from open_buildings.geo.shard_read import read_footprints

    return json.loads((out / "manifest.json").read_text())["settings"], read_footprints(out)


def test_min_confidence_auto_applies_the_checkpoints_operating_point(
    small_region: Path, tiny_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    from open_buildings.models.checkpoint import write_operating_points

    plain = tmp_path / "plain"
    assert ob_infer.main(_argv(small_region, tiny_checkpoint, plain)) == 0
    settings, everything = _written(plain)
    assert (
        settings["min_confidence"] == 0.0
        and "no operating points" in settings["min_confidence_source"]
    )
    assert "carries no operating points" in capsys.readouterr().err
    assert len(everything) > 4

    threshold = float(everything["confidence"].median())
    calibrated = tmp_path / "calibrated.safetensors"
    best = {"threshold": threshold, "precision": 0.5, "recall": 0.5, "f1": 0.5}
    points = {"best_f1": best, "precision_targets": [], "measured_on": "a test area"}
    write_operating_points(tiny_checkpoint, points, out=calibrated)
    out = tmp_path / "auto"
    assert ob_infer.main(_argv(small_region, calibrated, out)) == 0
    settings, kept = _written(out)
    assert (
        settings["min_confidence"] == threshold
        and "a test area" in settings["min_confidence_source"]
    )
    assert 0 < len(kept) < len(everything) and (kept["confidence"] >= threshold).all()
    assert len(kept) == int((everything["confidence"] >= threshold).sum())

    forced = tmp_path / "forced"
    assert ob_infer.main(_argv(small_region, calibrated, forced, "--min-confidence", "0")) == 0
    assert len(_written(forced)[1]) == len(everything)
    with pytest.raises(SystemExit) as refused:  # argparse refuses it before anything runs
        ob_infer.main(_argv(small_region, calibrated, tmp_path / "x", "--min-confidence", "2"))
    assert refused.value.code == 2
    assert "a number in [0, 1] or 'auto'" in capsys.readouterr().err


def test_footprints_outside_the_region_are_dropped_and_counted(
    tiny_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    from open_buildings.geo.regions import read_region

    # A region much smaller than its level-16 tiles: most of what the tiles see lies outside.
    region_path = write_region(tmp_path / "r.geojson", (36.9071, -1.3056, 36.9075, -1.3052))
    region = read_region(region_path).geometry
    whole = tmp_path / "whole"
    assert ob_infer.main(_argv(region_path, tiny_checkpoint, whole, "--keep-whole-tiles")) == 0
    settings, everything = _written(whole)
    assert settings["clip_to_region"] is False
    capsys.readouterr()
    clipped = tmp_path / "clipped"
    assert ob_infer.main(_argv(region_path, tiny_checkpoint, clipped)) == 0
    settings, kept = _written(clipped)
    assert settings["clip_to_region"] is True
    inside = shapely.intersects_xy(region, everything["longitude"], everything["latitude"])
    assert 0 < inside.sum() < len(everything)
    assert sorted(kept.geometry.to_wkt()) == sorted(everything.geometry[inside].to_wkt())
    # only buildings within the tile margin of the region are looked at (geo.region_mask): those
    # of them outside it are counted, the ones farther away were never polygonized
    out = capsys.readouterr().out
    dropped = int(re.search(r"outside the region: ([\d,]+) dropped", out)[1].replace(",", ""))
    assert 0 < dropped < len(everything) - len(kept)


def test_bands_maps_a_single_band_image(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    import numpy as np
    import rasterio

    # The sample's real Nairobi imagery made grey: one band, as a panchromatic file would be.
    with rasterio.open(SAMPLE / "nairobi_a.tif") as src:
        profile = src.profile | {"count": 1, "photometric": "MINISBLACK"}
        grey = src.read().astype(np.float32).mean(axis=0).round().astype(np.uint8)
    grey_tif = tmp_path / "grey.tif"
    with rasterio.open(grey_tif, "w", **profile) as dst:
        dst.write(grey, 1)
    region = write_region(tmp_path / "r.geojson", SMALL_BOX)
    argv = [*_argv(region, tiny_checkpoint, tmp_path / "unmapped"), "--imagery", str(grey_tif)]
    assert ob_infer.main(argv) == 2  # refused before anything runs, saying what to pass
    assert "--bands 1,1,1" in capsys.readouterr().err
    argv = [*_argv(region, tiny_checkpoint, tmp_path / "out"), "--imagery", str(grey_tif)]
    assert ob_infer.main([*argv, "--bands", "1,1,1"]) == 0
    assert not (tmp_path / "out" / sinks.DEAD_LETTER_NAME).exists()
    assert "dead letters: 0 tile(s)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        ob_infer.main([*argv, "--bands", "1,2"])


def test_fix_invalid_repairs_a_self_intersecting_region(
    tiny_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    # A bow tie over the sample: invalid as given, two triangles once repaired.
    w, s, e, n = 36.9070, -1.3058, 36.9078, -1.3049
    ring = [[w, s], [e, n], [e, s], [w, n], [w, s]]
    region = tmp_path / "bowtie.geojson"
    region.write_text(json.dumps({"type": "Polygon", "coordinates": [ring]}))
    assert ob_infer.main(_argv(region, tiny_checkpoint, tmp_path / "a")) == 2
    assert "--fix-invalid" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="repaired an invalid polygon"):
        assert ob_infer.main(_argv(region, tiny_checkpoint, tmp_path / "b", "--fix-invalid")) == 0
