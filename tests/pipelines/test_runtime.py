"""How a worker runs the model: ONNX Runtime or PyTorch, the same logits either way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import StopBuildError

from open_buildings.commands import infer as ob_infer
from open_buildings.errors import ConfigError
from open_buildings.models.checkpoint import load_checkpoint
from open_buildings.pipelines import onnx_backend, runtime
from open_buildings.pipelines.onnx_model import OnnxModel

needs_ort = pytest.mark.skipif(
    not onnx_backend.conversion_available(), reason="onnxruntime/onnx are not installed"
)


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (3, h, w), dtype=np.uint8) for h, w in [(90, 100), (95, 97)]]


def _logits(model: torch.nn.Module) -> list[np.ndarray]:
    return runtime.run_model(model, _images())


def test_native_bf16_is_what_onednn_reports() -> None:
    assert runtime.native_bf16("cpu") == torch.ops.mkldnn._is_mkldnn_bf16_supported()


def test_an_unknown_backend_is_refused(tiny_checkpoint: Path) -> None:
    with pytest.raises(ConfigError, match="auto, torch, onnxruntime"):
        runtime.prepare_model(load_checkpoint(tiny_checkpoint), backend="tensorrt")


def test_torch_backend_runs_channels_last_with_the_same_logits(tiny_checkpoint: Path) -> None:
    want = _logits(load_checkpoint(tiny_checkpoint))
    model, used = runtime.prepare_model(load_checkpoint(tiny_checkpoint), backend="torch")
    assert used == "torch-channels-last"
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    for got, ref in zip(_logits(model), want, strict=True):
        np.testing.assert_allclose(got, ref, atol=1e-5)


def test_a_shared_model_runs_through_a_method_only_proxy(tiny_checkpoint: Path) -> None:
    # Beam's cross-process proxy exposes methods only, not attributes or isinstance.
    from open_buildings.pipelines.forward import NumpyForward

    class MethodsOnly:
        def __init__(self, target: NumpyForward) -> None:
            self.size_divisor = target.size_divisor
            self._target = target

        def __call__(self, x: np.ndarray) -> np.ndarray:
            return self._target(x)

    model = load_checkpoint(tiny_checkpoint)
    shared = MethodsOnly(NumpyForward(model))
    assert shared.size_divisor() == model.input_spec.divisor
    for got, ref in zip(_logits(shared), _logits(model), strict=True):
        np.testing.assert_array_equal(got, ref)


@needs_ort
def test_onnxruntime_gives_the_same_logits_and_is_batch_independent(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPEN_BUILDINGS_CACHE", str(tmp_path))
    want = _logits(load_checkpoint(tiny_checkpoint))
    model, used = runtime.prepare_model(load_checkpoint(tiny_checkpoint), backend="onnxruntime")
    assert used == "onnxruntime" and isinstance(model, OnnxModel)
    both = _logits(model)
    for got, ref in zip(both, want, strict=True):
        assert got.shape == ref.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, ref, atol=1e-4)
    alone = runtime.run_model(model, _images()[1:])[0]
    np.testing.assert_array_equal(alone, both[1])  # a tile's logits ignore its batch neighbours
    assert len(list((tmp_path / "onnx").glob("unet_tiny-*.onnx"))) == 1


@needs_ort
def test_the_conversion_is_cached_and_a_broken_cache_file_is_rebuilt(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPEN_BUILDINGS_CACHE", str(tmp_path))
    runtime.prepare_model(load_checkpoint(tiny_checkpoint), backend="onnxruntime")
    (cached,) = (tmp_path / "onnx").glob("*.onnx")
    exports = []
    real_export = onnx_backend.export_onnx
    monkeypatch.setattr(
        onnx_backend, "export_onnx", lambda m, p: exports.append(p) or real_export(m, p)
    )
    runtime.prepare_model(load_checkpoint(tiny_checkpoint), backend="onnxruntime")
    assert exports == []  # reused
    cached.write_bytes(b"not an onnx file")
    model, used = runtime.prepare_model(load_checkpoint(tiny_checkpoint), backend="onnxruntime")
    assert used == "onnxruntime" and exports == [cached]
    np.testing.assert_allclose(
        _logits(model)[0], _logits(load_checkpoint(tiny_checkpoint))[0], atol=1e-4
    )


@needs_ort
def test_a_conversion_that_disagrees_falls_back_to_torch_or_is_refused(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPEN_BUILDINGS_CACHE", str(tmp_path))
    monkeypatch.setattr(onnx_backend, "_agrees", lambda model, net: False)
    with pytest.warns(UserWarning, match="running it in PyTorch"):
        _, used = runtime.prepare_model(load_checkpoint(tiny_checkpoint))
    assert used == "torch-channels-last"
    with pytest.raises(ConfigError, match="cannot run in ONNX Runtime"):
        runtime.prepare_model(load_checkpoint(tiny_checkpoint), backend="onnxruntime")


def test_bf16_and_gpus_stay_on_torch(tiny_checkpoint: Path) -> None:
    _, used = runtime.prepare_model(load_checkpoint(tiny_checkpoint), bf16=True)
    assert used == "torch-channels-last"  # auto never sends bf16 to ONNX Runtime
    with pytest.raises(ConfigError, match="fp32 on a CPU"):
        runtime.prepare_model(load_checkpoint(tiny_checkpoint), bf16=True, backend="onnxruntime")


def test_without_onnxruntime_auto_is_torch(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_backend, "conversion_available", lambda: False)
    _, used = runtime.prepare_model(load_checkpoint(tiny_checkpoint))
    assert used == "torch-channels-last"
    with pytest.raises(ConfigError, match="pip install onnxruntime"):
        runtime.prepare_model(load_checkpoint(tiny_checkpoint), backend="onnxruntime")


@needs_ort
def test_a_worker_reloads_a_sealed_conversion_without_building_the_network(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from open_buildings.models import checkpoint, registry
    from open_buildings.pipelines.model_handler import CheckpointModelHandler
    from open_buildings.pipelines.runtime import resolve_model

    monkeypatch.setenv("OPEN_BUILDINGS_CACHE", str(tmp_path))
    ref = resolve_model(str(tiny_checkpoint))
    assert onnx_backend.load_cached(ref.path, ref.sha256) is None  # nothing converted yet
    first = CheckpointModelHandler(ref)
    want = _logits(first.load_model())
    assert first.backend_used == "onnxruntime"

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("the PyTorch network was built")

    monkeypatch.setattr(registry, "build_model", no_build)
    monkeypatch.setattr(checkpoint, "build_model", no_build)
    second = CheckpointModelHandler(ref)
    model = second.load_model()
    assert second.backend_used == "onnxruntime" and isinstance(model, OnnxModel)
    assert model.name == "unet_tiny" and model.input_spec.divisor == 32
    for got, ref_logits in zip(_logits(model), want, strict=True):
        np.testing.assert_array_equal(got, ref_logits)
    # another checkpoint hash, or a tampered conversion, is not taken from the cache
    assert onnx_backend.load_cached(ref.path, "0" * 64) is None
    (onnx,) = (tmp_path / "onnx").glob("*.onnx")
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    assert onnx_backend.load_cached(ref.path, ref.sha256) is None


def test_ob_infer_batches_one_tile_at_a_time_on_a_cpu(
    small_region: Path, tiny_checkpoint: Path, tmp_path: Path, ob_infer_configs: list
) -> None:
    seen = ob_infer_configs
    base = [str(small_region), "--model", str(tiny_checkpoint), "--no-progress"]
    for extra, want in (([], 1), (["--batch-size", "3"], 3)):
        with pytest.raises(StopBuildError):
            ob_infer.main([*base, "--out", str(tmp_path / f"out{want}"), *extra])
        assert seen[-1].runtime.max_batch_size == want and seen[-1].runtime.backend == "auto"
