"""The ONNX export a checkpoint ships with, and ob-infer without PyTorch (the light install)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from open_buildings.errors import CheckpointError
from open_buildings.models.checkpoint import file_sha256, load_checkpoint
from open_buildings.models.padding import pad_array, pad_to
from open_buildings.pipelines import onnx_backend, onnx_model, runtime
from open_buildings.pipelines.config import RuntimeConfig
from open_buildings.pipelines.onnx_model import OnnxModel
from open_buildings.resources import resource

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = Path(str(resource("models", "default", "weights.safetensors")))
#: What the light install lacks (pyproject's [train] extra); None in sys.modules fails the import.
TRAIN_ONLY = ("torch", "torchvision", "timm", "segmentation_models_pytorch", "albumentations")


def _sample_crop() -> np.ndarray:
    path = next((ROOT / "geo" / "sample").glob("*.tif"))
    with rasterio.open(path) as src:
        return src.read((1, 2, 3), window=((0, 300), (0, 260)))


def test_the_shipped_export_is_of_the_shipped_weights_and_agrees_with_pytorch() -> None:
    export = onnx_model.export_path(DEFAULT)
    model = onnx_model.open_beside(DEFAULT, file_sha256(DEFAULT))
    assert model is not None, f"{export} is missing or was exported from other weights"
    assert model.checkpoint_sha256 == file_sha256(DEFAULT)
    torch_model = load_checkpoint(DEFAULT)
    assert model.input_spec == torch_model.input_spec
    assert model.output_channels == torch_model.output_channels
    rgb = _sample_crop()
    (got,) = runtime.run_model(model, [rgb])
    (want,) = runtime.run_model(torch_model, [rgb])
    assert got.shape == want.shape == (len(model.output_channels), *rgb.shape[1:])
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=1e-4)


def test_test_time_augmentation_is_the_same_through_onnx_and_pytorch() -> None:
    rgb = _sample_crop()[:, :130, :150]
    model = onnx_model.open_beside(DEFAULT, file_sha256(DEFAULT))
    (got,) = runtime.run_model(model, [rgb], tta=True)
    (want,) = runtime.run_model(load_checkpoint(DEFAULT), [rgb], tta=True)
    (plain,) = runtime.run_model(model, [rgb])
    np.testing.assert_allclose(got, want, atol=2e-3)
    assert not np.allclose(got, plain, atol=1e-2)  # the 8 views really were averaged


@pytest.mark.parametrize("mode", ["reflect", "replicate", "constant"])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 3, 90, 100), (1, 3, 64, 64)])
def test_numpy_padding_is_torch_padding(shape: tuple[int, ...], mode: str) -> None:
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    for centre in (True, False):
        want, offset = pad_to(torch.from_numpy(x), 128, 128, mode=mode, centre=centre)
        got, got_offset = pad_array(x, 128, 128, mode=mode, centre=centre)
        assert got_offset == offset
        np.testing.assert_array_equal(got, want.numpy())


@pytest.fixture
def exported(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """A copy of the tiny checkpoint with its ONNX export beside it."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    for path in tiny_checkpoint.parent.glob(tiny_checkpoint.name + "*"):
        shutil.copy(path, folder / path.name)
    checkpoint = folder / tiny_checkpoint.name
    onnx_backend.export_beside(checkpoint)
    return checkpoint


def test_a_worker_runs_the_export_beside_a_checkpoint_without_building_the_network(
    exported: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from open_buildings.models import checkpoint, registry

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("the PyTorch network was built")

    want = runtime.run_model(load_checkpoint(exported), [_sample_crop()])[0]
    monkeypatch.setattr(registry, "build_model", no_build)
    monkeypatch.setattr(checkpoint, "build_model", no_build)
    ref = runtime.resolve_model(str(exported))
    model, used, _ = runtime.load_model(ref, RuntimeConfig(backend="onnxruntime"))
    assert used == "onnxruntime" and type(model) is OnnxModel
    assert model.path == str(exported.with_suffix(".onnx"))
    np.testing.assert_allclose(runtime.run_model(model, [_sample_crop()])[0], want, atol=1e-3)


def test_a_damaged_export_is_refused_and_another_checkpoints_is_not_used(
    exported: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    export = exported.with_suffix(".onnx")
    data = bytearray(export.read_bytes())
    data[len(data) // 2] ^= 0xFF
    export.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged"):
        onnx_model.open_beside(exported, file_sha256(exported))
    Path(str(export) + ".sha256").unlink()
    with pytest.raises(CheckpointError, match="no sha256 sidecar"):
        onnx_model.open_beside(exported, file_sha256(exported))
    # an export from other weights (here: the default model's) beside this checkpoint
    shutil.copy(onnx_model.export_path(DEFAULT), export)
    shutil.copy(str(onnx_model.export_path(DEFAULT)) + ".sha256", str(export) + ".sha256")
    sidecar = Path(str(export) + ".sha256")
    sidecar.write_text(sidecar.read_text().replace("weights.onnx", export.name))
    with pytest.warns(UserWarning, match="exported from another checkpoint"):
        assert onnx_model.open_beside(exported, file_sha256(exported)) is None
    with pytest.raises(CheckpointError, match="not a readable ONNX model"):
        OnnxModel(exported)  # the safetensors file itself


def _without_torch(tmp_path: Path) -> dict[str, str]:
    """An environment whose Python cannot import torch and the other [train] packages."""
    site = tmp_path / "no_torch"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in TRAIN_ONLY)
    )
    env = dict(os.environ, PYTHONPATH=str(site), OPEN_BUILDINGS_CACHE=str(tmp_path / "cache"))
    check = [
        sys.executable,
        "-c",
        "import importlib.util as u; assert u.find_spec('torch') is None",
    ]
    subprocess.run(check, env=env, check=True)
    return env


def _ob(command: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = f"import sys; from open_buildings.commands.{command} import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_ob_infer_runs_the_default_model_without_pytorch(tmp_path: Path) -> None:
    env = _without_torch(tmp_path)
    light = _ob("infer", "--out", str(tmp_path / "light"), "--no-progress", env=env)
    assert light.returncode == 0, light.stderr[-3000:]
    full = _ob("infer", "--out", str(tmp_path / "full"), "--no-progress", env=dict(os.environ))
    assert full.returncode == 0, full.stderr[-3000:]
    found = [line for line in light.stdout.splitlines() if line.startswith("buildings found")]
    assert found and int(found[0].split(":")[1]) > 0
    for shard in (tmp_path / "full").glob("*_buildings.*"):
        assert (tmp_path / "light" / shard.name).read_bytes() == shard.read_bytes(), shard.name
    for command in ("evaluate", "download", "models"):
        assert _ob(command, "--help", env=env).returncode == 0, command
    training = _ob("models", "export-onnx", str(DEFAULT), env=env)
    assert training.returncode == 2 and "open-buildings-pipeline[train]" in training.stderr


def test_without_pytorch_a_model_with_no_export_says_what_to_install(
    tiny_checkpoint: Path, small_region: Path, tmp_path: Path
) -> None:
    env = _without_torch(tmp_path)
    args = [str(small_region), "--model", str(tiny_checkpoint), "--out", str(tmp_path / "o")]
    result = _ob("infer", *args, "--no-progress", env=env)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "open-buildings-pipeline[train]" in result.stderr
    assert "ob-models export-onnx" in result.stderr
    assert "Traceback" not in result.stderr


needs_bf16 = pytest.mark.skipif(
    not onnx_model.openvino_bf16_available(), reason="this CPU has no native bf16 for OpenVINO"
)


@needs_bf16
def test_openvino_bf16_runs_the_shipped_export_close_to_fp32() -> None:
    fp32 = onnx_model.open_beside(DEFAULT, file_sha256(DEFAULT))
    bf16 = onnx_model.open_beside(DEFAULT, file_sha256(DEFAULT), onnx_model.OpenVinoBf16Model)
    assert bf16 is not None and bf16.backend == "openvino-bf16" and bf16.name == fp32.name
    rgb = _sample_crop()
    (want,) = runtime.run_model(fp32, [rgb])
    (got,) = runtime.run_model(bf16, [rgb])
    assert got.shape == want.shape and got.dtype == np.float32
    assert not np.array_equal(got, want)  # really another precision
    assert ((got[0] > 0) == (want[0] > 0)).mean() > 0.99  # the same building mask, nearly
    model, used, _ = runtime.load_model(runtime.resolve_model("default"), RuntimeConfig())
    assert used == "openvino-bf16" and isinstance(model, onnx_model.OpenVinoBf16Model)


def test_auto_falls_back_to_onnxruntime_without_native_bf16(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from open_buildings.errors import ConfigError

    monkeypatch.setattr(onnx_model, "openvino_bf16_available", lambda: False)
    assert runtime.export_runtime("auto") is OnnxModel
    assert runtime.export_runtime("onnxruntime") is OnnxModel
    with pytest.raises(ConfigError, match="native bfloat16"):
        runtime.export_runtime("openvino-bf16")
    model, used, _ = runtime.load_model(runtime.resolve_model("default"), RuntimeConfig())
    assert used == "onnxruntime" and type(model) is OnnxModel


@needs_bf16
def test_openvino_failing_under_auto_falls_back_to_onnxruntime(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from open_buildings.errors import CheckpointError

    def broken(self: object, threads: int | None) -> None:
        raise RuntimeError("Exception from src/inference: cannot compile for this CPU")

    monkeypatch.setattr(onnx_model.OpenVinoBf16Model, "_open", broken)
    with pytest.warns(UserWarning, match="running it in ONNX Runtime fp32"):
        model, used, _ = runtime.load_model(runtime.resolve_model("default"), RuntimeConfig())
    assert used == "onnxruntime" and type(model) is OnnxModel
    with pytest.raises(CheckpointError, match="not a readable ONNX model"):
        runtime.load_model(runtime.resolve_model("default"), RuntimeConfig(backend="openvino-bf16"))


def test_openvino_runs_without_its_usage_telemetry(tmp_path: Path) -> None:
    # openvino_telemetry phones home from a thread that forks (a crash beside Beam's gRPC) and
    # writes under $HOME; the project imports OpenVINO with its no-op stub instead
    code = (
        "import threading, time\n"
        "from open_buildings.pipelines.onnx_model import import_openvino\n"
        "ov = import_openvino()\n"
        "ov.Core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES')\n"
        "from openvino.tools import ovc\n"
        "time.sleep(0.5)\n"
        "print(type(ovc.telemetry).__module__, threading.active_count())\n"
    )
    env = {**os.environ, "HOME": str(tmp_path), "CI": "false"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["openvino.tools.ovc.telemetry_stub", "1"]
    assert not (tmp_path / "intel").exists()


def test_openvino_leaves_the_main_threads_signal_stack_alone() -> None:
    # OpenVINO's CPU plugin points the loading thread's sigaltstack at memory its Core frees:
    # a Core freed on another thread left the main thread's dangling, and the next SIGCHLD
    # (a DataLoader's handler) killed the process with SIGSEGV
    code = f"""
import ctypes, faulthandler, gc, signal, subprocess, threading
faulthandler.enable()
libc = ctypes.CDLL(None)
class Stack(ctypes.Structure):
    _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]
def stack():
    s = Stack(); libc.sigaltstack(None, ctypes.byref(s)); return (s.sp, s.size)
before = stack()
from open_buildings.models.checkpoint import file_sha256
from open_buildings.pipelines import onnx_model
box = [onnx_model.open_beside({str(DEFAULT)!r}, file_sha256({str(DEFAULT)!r}),
                              onnx_model.OpenVinoBf16Model)]
assert onnx_model.openvino_bf16_available() in (True, False)
t = threading.Thread(target=lambda: (box.clear(), gc.collect())); t.start(); t.join()
assert stack() == before, (stack(), before)
signal.signal(signal.SIGCHLD, lambda *a: None)
subprocess.run(["true"])
print("alive")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "alive", done.stderr[-2000:]
