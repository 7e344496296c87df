"""The int8 export (``ob-models quantize-int8``): calibrated on real tiles, run by ob-infer's
loader as ``--backend onnxruntime-int8``, close to fp32, and refused where it does not belong."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from open_buildings.commands import models as ob_models
from open_buildings.errors import ConfigError
from open_buildings.pipelines import onnx_model, runtime
from open_buildings.pipelines.config import RuntimeConfig
from open_buildings.pipelines.onnx_int8 import calibration_windows, mask_agreement
from open_buildings.resources import resource

DATA = Path(__file__).resolve().parents[1] / "data" / "imagery"
DEFAULT = Path(str(resource("models", "default", "weights.safetensors")))
SAMPLE = Path(__file__).resolve().parents[2] / "geo" / "sample"


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the default model with an int8 export calibrated on Banepa windows."""
    folder = tmp_path_factory.mktemp("int8") / "default"
    folder.mkdir()
    for name in ("weights.safetensors", "weights.safetensors.sha256", "weights.onnx",
                 "weights.onnx.sha256"):  # fmt: skip
        shutil.copy(DEFAULT.parent / name, folder / name)
    assert _quantize(folder, windows=4) == 0
    return folder / "weights.safetensors"


def _quantize(folder: Path, windows: int) -> int:
    """``ob-models quantize-int8 FOLDER`` on 128 px windows of the Banepa test tiles."""
    argv = ["quantize-int8", str(folder), "--imagery", str(DATA / "banepa")]
    return ob_models.main([*argv, "--windows", str(windows), "--window", "128"])


def test_calibration_windows_are_imagery_of_one_size_and_reproducible() -> None:
    windows = calibration_windows([str(DATA / "banepa")], 3, window=128)
    assert 1 <= len(windows) <= 3
    for window in windows:
        assert window.dtype == np.uint8 and window.shape == (3, 128, 128)
        assert (window.reshape(3, -1).max(axis=0) > 0).mean() >= 0.9  # imagery, not padding
    again = calibration_windows([str(DATA / "banepa")], 3, window=128)
    assert all(np.array_equal(a, b) for a, b in zip(windows, again))


def test_the_int8_export_is_quantized_and_runs_close_to_fp32(quantized: Path) -> None:
    path = onnx_model.export_path(quantized, onnx_model.OnnxInt8Model)
    assert Path(str(path) + ".sha256").is_file()
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    model, used, _ = runtime.load_model(
        runtime.resolve_model(str(quantized)), RuntimeConfig(backend="onnxruntime-int8")
    )
    assert used == "onnxruntime-int8" and model.path == str(path)
    fp32, _, _ = runtime.load_model(
        runtime.resolve_model(str(quantized)), RuntimeConfig(backend="onnxruntime")
    )
    import rasterio

    with rasterio.open(next(SAMPLE.glob("*.tif"))) as src:
        crop = src.read((1, 2, 3), window=((0, 384), (0, 384)))
    a, b = runtime.run_model(fp32, [crop])[0], runtime.run_model(model, [crop])[0]
    assert not np.array_equal(a, b)  # really another computation
    assert mask_agreement(fp32, model, [crop]) > 0.95


def test_int8_without_an_int8_export_says_how_to_write_one(tiny_checkpoint: Path) -> None:
    with pytest.raises(ConfigError, match="ob-models quantize-int8"):
        runtime.load_model(
            runtime.resolve_model(str(tiny_checkpoint)), RuntimeConfig(backend="onnxruntime-int8")
        )


def test_an_int8_export_of_other_weights_is_refused(quantized: Path, tmp_path: Path) -> None:
    folder = tmp_path / "other"
    shutil.copytree(quantized.parent, folder)
    int8 = onnx_model.export_path(folder / "weights.safetensors", onnx_model.OnnxInt8Model)
    fp32 = onnx_model.export_path(folder / "weights.safetensors")
    # another checkpoint's weights under this name: its own sidecar, the old exports beside it
    from open_buildings.models.checkpoint import save_checkpoint
    from open_buildings.models.registry import build_model

    save_checkpoint(build_model("unet_efficientnet_lite1"), folder / "weights.safetensors")
    assert int8.is_file() and fp32.is_file()
    with pytest.raises(ConfigError, match="made from other weights"), pytest.warns(UserWarning):
        runtime.load_model(
            runtime.resolve_model(str(folder)), RuntimeConfig(backend="onnxruntime-int8")
        )


def test_quantizing_needs_the_fp32_export_first(
    tiny_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(tiny_checkpoint, folder / "weights.safetensors")
    shutil.copy(str(tiny_checkpoint) + ".sha256", folder / "weights.safetensors.sha256")
    assert _quantize(folder, windows=1) == 2
    assert "ob-models export-onnx" in capsys.readouterr().err


def test_the_shipped_int8_export_is_of_the_shipped_weights() -> None:
    from open_buildings.models.checkpoint_meta import file_sha256

    model = onnx_model.open_beside(DEFAULT, file_sha256(DEFAULT), onnx_model.OnnxInt8Model)
    assert model is not None and model.backend == "onnxruntime-int8"
