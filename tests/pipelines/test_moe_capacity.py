"""``ob-infer --moe-capacity``: the V-MoE compute knob reaches the model, and only MoE models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TEST_TILE_LEVEL

from open_buildings.commands import infer as ob_infer
from open_buildings.config import validate_config
from open_buildings.errors import ConfigError, InferenceError
from open_buildings.models import moe
from open_buildings.pipelines.config import InferConfig
from open_buildings.pipelines.model_handler import CheckpointModelHandler
from open_buildings.pipelines.runtime import resolve_model


@pytest.fixture(scope="module")
def vmoe_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained ``vmoe_tiny`` saved with ``save_checkpoint`` (fixed seed)."""
    import torch

    from open_buildings.models.checkpoint import save_checkpoint
    from open_buildings.models.registry import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "vmoe_tiny.safetensors"
    save_checkpoint(build_model("vmoe_tiny"), path)
    return path


def _parse(data: dict) -> InferConfig:
    return validate_config(InferConfig, data, source="test")


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


def test_ob_infer_runs_a_vmoe_checkpoint_at_the_given_capacity(
    vmoe_checkpoint: Path,
    small_region: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    applied: list[tuple[str, float, list[float]]] = []
    real = moe.set_capacity

    def spy(model, capacity_factor):
        count = real(model, capacity_factor)
        layers = [m.capacity_factor_eval for m in moe.moe_layers(model)]
        applied.append((model.name, capacity_factor, layers))
        return count

    monkeypatch.setattr(moe, "set_capacity", spy)
    out = tmp_path / "out"
    argv = _argv(small_region, vmoe_checkpoint, out, "--moe-capacity", "0.5")
    assert ob_infer.main(argv) == 0, capsys.readouterr().err
    assert applied and all(a == ("vmoe_tiny", 0.5, [0.5, 0.5]) for a in applied)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["name"] == str(vmoe_checkpoint)
    assert manifest["model"]["moe_capacity"] == 0.5
    assert "buildings found" in capsys.readouterr().out


@pytest.mark.parametrize("capacity", [None, 0.25])
def test_manifest_records_the_moe_capacity_only_when_set(tmp_path: Path, capacity) -> None:
    from open_buildings.geo import footprints

    model = {"name": "vmoe.safetensors", "sha256": "ab" * 32, "moe_capacity": capacity}
    path = footprints.write_manifest(tmp_path, [], code_version="test", model=model)
    recorded = json.loads(path.read_text())["model"]
    expected = {"name": "vmoe.safetensors", "sha256": "ab" * 32}
    assert recorded == (expected if capacity is None else {**expected, "moe_capacity": capacity})


def test_moe_capacity_for_a_unet_checkpoint_is_refused_before_anything_runs(
    tiny_checkpoint: Path, small_region: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = _argv(small_region, tiny_checkpoint, out, "--moe-capacity", "0.5")
    assert ob_infer.main(argv) == 2
    err = capsys.readouterr().err
    assert "--moe-capacity applies to V-MoE models only" in err
    assert "unet_tiny checkpoint" in err and "drop --moe-capacity" in err
    assert not out.exists()


def test_the_capacity_reaches_the_worker_model(vmoe_checkpoint: Path, tiny_checkpoint) -> None:
    handler = CheckpointModelHandler(resolve_model(str(vmoe_checkpoint), moe_capacity=0.3))
    model = handler.load_model()
    assert [m.capacity_factor_eval for m in moe.moe_layers(model)] == [0.3, 0.3]
    untouched = CheckpointModelHandler(resolve_model(str(vmoe_checkpoint))).load_model()
    assert [m.capacity_factor_eval for m in moe.moe_layers(untouched)] == [1.05, 1.05]
    with pytest.raises(InferenceError, match="no mixture-of-experts layers"):
        resolve_model(str(tiny_checkpoint), moe_capacity=0.3)


def test_a_job_config_checks_the_capacity() -> None:
    assert _parse({"output": "o", "moe_capacity": 0.75}).moe_capacity == 0.75
    assert _parse({"output": "o"}).moe_capacity is None
    with pytest.raises(ConfigError, match="moe_capacity"):
        _parse({"output": "o", "moe_capacity": 0})
