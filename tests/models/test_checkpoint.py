"""Checkpoints: the file alone rebuilds the model; every corruption is a named error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from open_buildings.errors import CheckpointError
from open_buildings.models import build_model, file_sha256, load_checkpoint, save_checkpoint
from open_buildings.models.checkpoint import read_metadata


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, str, torch.nn.Module]:
    torch.manual_seed(1)
    model = build_model("unet_tiny", decoder_channels=[16, 8, 8]).eval()
    path = tmp_path / "tiny.safetensors"
    sha = save_checkpoint(model, path)
    return path, sha, model


def test_file_metadata_and_sidecar(saved) -> None:
    path, sha, model = saved
    assert sha == file_sha256(path)
    assert (path.parent / "tiny.safetensors.sha256").read_text() == f"{sha}  tiny.safetensors\n"
    meta = read_metadata(path)
    assert meta["format_version"] == "1"
    assert meta["name"] == "unet_tiny"
    assert json.loads(meta["config"]) == model.config
    assert json.loads(meta["output_channels"]) == ["building", "interior"]
    assert json.loads(meta["input_spec"])["divisor"] == 32
    assert not list(path.parent.glob("*.tmp"))


def test_rebuilds_the_exact_model(saved) -> None:
    path, sha, model = saved
    loaded = load_checkpoint(path, expected_sha256=sha)
    assert not loaded.training
    assert loaded.config["decoder_channels"] == [16, 8, 8]
    x = torch.rand(2, 3, 40, 56)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_wrong_sha256_says_expected_and_actual(saved) -> None:
    path, sha, _ = saved
    with pytest.raises(CheckpointError, match=f"expected {'0' * 64}, got {sha}.*again"):
        load_checkpoint(path, expected_sha256="0" * 64)


def test_tampered_file_fails_its_sidecar(saved) -> None:
    path, sha, _ = saved
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"expected {sha}"):
        load_checkpoint(path)


def test_missing_sidecar_is_an_error_unless_waived(saved) -> None:
    path, _, _ = saved
    (path.parent / "tiny.safetensors.sha256").unlink()
    with pytest.raises(CheckpointError, match="no sha256 sidecar"):
        load_checkpoint(path)
    load_checkpoint(path, verify_sidecar=False)


def test_not_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    torch.save({"w": torch.zeros(2)}, path)  # a pickle, as a .pt would be
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(path, verify_sidecar=False)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(path, verify_sidecar=False)


def _rewrite(path: Path, edit) -> None:
    tensors = load_file(path)
    meta = read_metadata(path)
    edit(tensors, meta)
    save_file(tensors, path, metadata=meta)


def test_missing_unexpected_and_mismatched_tensors_are_named(saved) -> None:
    path, _, _ = saved
    gone = "net.segmentation_head.0.bias"
    conv = "net.segmentation_head.0.weight"

    def edit(tensors, meta) -> None:
        del tensors[gone]
        tensors["net.extra.weight"] = torch.zeros(3)
        tensors[conv] = torch.zeros(5, 8, 3, 3)

    _rewrite(path, edit)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, verify_sidecar=False)
    msg = str(info.value)
    assert f"missing tensors: {gone}" in msg
    assert "unexpected tensors: net.extra.weight" in msg
    assert f"{conv} (file (5, 8, 3, 3), model (2, 8, 3, 3))" in msg


def test_safetensors_without_our_metadata(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="lacks the metadata"):
        load_checkpoint(path, verify_sidecar=False)


def test_unknown_model_name_in_metadata(saved) -> None:
    path, _, _ = saved
    _rewrite(path, lambda t, m: m.update(name="unet_resnet99"))
    with pytest.raises(CheckpointError, match="cannot rebuild model 'unet_resnet99'"):
        load_checkpoint(path, verify_sidecar=False)


def test_missing_file() -> None:
    with pytest.raises(FileNotFoundError):
        load_checkpoint("/nonexistent/model.safetensors")
