"""Operating points on real imagery: measured, stored in the checkpoint, read back by ob-infer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from open_buildings.commands import calibrate as ob_calibrate
from open_buildings.errors import CheckpointError
from open_buildings.geo.grid import GridSpec
from open_buildings.geo.imagery import open_imagery
from open_buildings.models.checkpoint import (
    load_checkpoint,
    read_metadata,
    read_operating_points,
    save_checkpoint,
    write_operating_points,
)
from open_buildings.resources import resource
from open_buildings.training.calibrate import operating_points
from open_buildings.training.scenes import load_scenes, read_labels

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "geo" / "sample" / "items.json"
LABELS = ROOT / "tests" / "data" / "labels" / "nairobi_ke.geojson"
DEFAULT = Path(str(resource("models", "default", "weights.safetensors")))


@pytest.fixture(scope="module")
def points() -> dict:
    """The default model's operating points on the sample (real Nairobi imagery, OSM labels)."""
    spec = GridSpec(level=14)
    scenes = load_scenes("sample", open_imagery(str(SAMPLE)), read_labels(LABELS), spec)
    assert scenes
    return operating_points(load_checkpoint(DEFAULT), scenes, measured_on="the sample", spec=spec)


def test_operating_points_are_consistent_points_of_one_curve(points: dict) -> None:
    best = points["best_f1"]
    assert points["measured_on"] == "the sample" and points["n_truth"] > 40
    assert 0 < best["threshold"] < 1 and best["f1"] > 0.3  # an untrained model gets 0
    p, r = best["precision"], best["recall"]
    assert best["f1"] == pytest.approx(2 * p * r / (p + r))
    reached = [t for t in points["precision_targets"] if t["threshold"] is not None]
    for t in points["precision_targets"]:
        if t["threshold"] is None:
            assert t["note"].startswith("unreachable")
    for t in reached:
        assert t["precision"] >= t["target"]
        f1 = 2 * t["precision"] * t["recall"] / (t["precision"] + t["recall"])
        assert f1 <= best["f1"] + 1e-12  # the best-F1 point is the best of them all
    thresholds = [t["threshold"] for t in reached]
    assert thresholds == sorted(thresholds)  # a higher precision never needs a lower threshold


def test_operating_points_round_trip_and_keep_the_tensors(points: dict, tmp_path: Path) -> None:
    out = tmp_path / "calibrated.safetensors"
    sha = write_operating_points(DEFAULT, points, out=out)
    assert read_operating_points(out) == json.loads(json.dumps(points))
    assert (tmp_path / "calibrated.safetensors.sha256").read_text().split()[0] == sha
    a, b = load_checkpoint(DEFAULT).state_dict(), load_checkpoint(out).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    meta = read_metadata(out)
    assert meta["config"] == read_metadata(DEFAULT)["config"]


def test_a_checkpoint_without_points_or_with_broken_ones(tmp_path: Path) -> None:
    from open_buildings.models.registry import build_model

    path = tmp_path / "plain.safetensors"
    save_checkpoint(build_model("unet_tiny"), path)
    assert read_operating_points(path) is None
    broken = tmp_path / "broken.safetensors"
    save_checkpoint(build_model("unet_tiny"), broken, operating_points={"best_f1": {}})
    with pytest.raises(CheckpointError, match="best_f1.threshold"):
        read_operating_points(broken)
    path.write_bytes(path.read_bytes()[:-1] + b"\0")  # no longer matches its sidecar
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        write_operating_points(path, {"best_f1": {"threshold": 0.5}}, out=tmp_path / "x")


def test_ob_calibrate_writes_a_calibrated_copy(tmp_path: Path, capsys) -> None:
    from open_buildings.models.registry import build_model

    model = tmp_path / "tiny.safetensors"
    torch.manual_seed(0)
    save_checkpoint(build_model("unet_tiny"), model)
    out = tmp_path / "calibrated.safetensors"
    argv = [str(model), "--imagery", str(SAMPLE), "--labels", str(LABELS), "--name", "sample"]
    assert ob_calibrate.main([*argv, "--out", str(out)]) == 0  # (seed 0 finds a few)
    printed = capsys.readouterr().out
    assert (
        read_operating_points(out)["measured_on"] == "sample"
        and "calibration written to" in printed
    )
    assert read_operating_points(model) is None  # the input is left as it was
    assert ob_calibrate.main([*argv, "--out", str(out)]) == 2  # exists: refused
    assert "exists" in capsys.readouterr().err
