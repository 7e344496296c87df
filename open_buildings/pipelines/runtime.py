"""How the model runs on a worker: the fastest measured path, never a silently different result.

On a CPU, :func:`prepare_model` runs the network through ONNX Runtime when ``onnxruntime`` is
installed (``bench/README.md``: about 2x faster than PyTorch in channels_last for the default
U-Net on an AVX2 CPU; ORT folds batch norms into convolutions and fuses activations). Without it,
or for a network that does not export, it keeps PyTorch and puts convolutional networks in
``channels_last`` (about 1.4x faster than contiguous on the same CPU). Either way the
:class:`~open_buildings.models.base.BuildingModel` wrapper stays, so normalisation, padding and
cropping are the same code; only ``model.net`` is replaced.

A converted network is checked against PyTorch on a random batch whose size differs from the
export's before it is used; if they disagree, PyTorch is kept with a warning. The ONNX file is
cached (``$OPEN_BUILDINGS_CACHE`` or ``~/.cache/open_buildings``) under a key made of the
checkpoint's sha256 (or the weights), the config and the library versions, and sealed with its own
sha256 once checked, so a worker pays the export once. :func:`load_cached` then rebuilds the model
from the checkpoint's metadata and the sealed file alone: it never builds the PyTorch network, so
a worker does not import timm and segmentation_models_pytorch (seconds of start-up).

bfloat16 is only worth it where the hardware has it: :func:`native_bf16` says whether this CPU
(AVX512-BF16 or AMX) or GPU does. On an AVX2-only CPU, PyTorch runs bf16 convolutions through a
reference kernel about 100x slower than fp32 (``python -m bench.speedups``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from open_buildings.errors import ConfigError

BACKENDS = ("auto", "torch", "onnxruntime")
#: Bump to invalidate every cached ONNX file (e.g. when the export recipe changes).
_EXPORT_VERSION = 1
_OPSET = 17
_CHECK_ATOL = 1e-3
_CHECK_RTOL = 1e-4


def onnxruntime_available() -> bool:
    """Return True when ``onnxruntime`` (and ``onnx``, which the exporter needs) can be imported."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Return True when ``device`` computes bfloat16 natively.

    Args:
        device: ``"cpu"`` or ``"cuda"`` (or a ``torch.device``).

    Returns:
        For a CPU: whether oneDNN has bf16 kernels here (AVX512-BF16 or AMX). For a GPU: whether
        torch reports bf16 support (Ampere and later).
    """
    kind = torch.device(device).type
    if kind == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cache_dir() -> Path:
    """Return the folder for converted models (``$OPEN_BUILDINGS_CACHE`` or ``~/.cache``)."""
    root = os.environ.get("OPEN_BUILDINGS_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "open_buildings"
    return base / "onnx"


class OrtNet(nn.Module):
    """A network run by an ONNX Runtime session, callable like the ``nn.Module`` it came from.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (torch's count by default).
    """

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = str(path)
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the session on a float32 CPU batch; return its first output as a tensor."""
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(self.session.run(None, {self._input: array})[0])

    def extra_repr(self) -> str:
        """Name the ONNX file."""
        return f"path={self.path!r}"


def checkpoint_key(sha256: str, moe_capacity: float | None = None) -> str:
    """The cache key of a checkpoint's conversion: its sha256, the MoE capacity, the versions."""
    from open_buildings import __version__

    meta = {
        "sha256": sha256.lower(),
        "moe_capacity": moe_capacity,
        "open_buildings": __version__,
        "torch": torch.__version__,
        "opset": _OPSET,
        "export": _EXPORT_VERSION,
    }
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:32]


def _seal(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _sealed(path: Path) -> bool:
    """True when ``path`` exists and matches the sha256 written when it was checked."""
    from open_buildings.models.checkpoint import file_sha256

    seal = _seal(path)
    if not (path.is_file() and seal.is_file()):
        return False
    return seal.read_text(encoding="ascii").strip() == file_sha256(path)


def _write_seal(path: Path) -> None:
    from open_buildings.models.checkpoint import file_sha256

    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".sha256.tmp")
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(file_sha256(path) + "\n")
    os.replace(tmp, _seal(path))


def load_cached(
    checkpoint: str | os.PathLike[str],
    sha256: str | None,
    *,
    moe_capacity: float | None = None,
    device: str | torch.device = "cpu",
    bf16: bool = False,
    backend: str = "auto",
) -> nn.Module | None:
    """Return the model with its sealed ONNX conversion, without building the PyTorch network.

    Args:
        checkpoint: the local ``.safetensors`` file.
        sha256: its expected sha256 (checked here); None skips this path.
        moe_capacity: the eval capacity the conversion was made at.
        device: where the model will run (only a CPU uses ONNX Runtime).
        bf16: bfloat16 autocast asked for (ONNX Runtime is then not used).
        backend: as for :func:`prepare_model`.

    Returns:
        A ``BuildingModel`` whose ``net`` is an :class:`OrtNet`, or None when this path does not
        apply (no conversion cached yet, another backend or device, a checkpoint that does not
        match ``sha256``: the caller then loads it the full way, which reports the problem).
    """
    if backend == "torch" or bf16 or torch.device(device).type != "cpu" or not sha256:
        return None
    if not onnxruntime_available():
        return None
    from open_buildings.models.base import BuildingModel, InputSpec
    from open_buildings.models.checkpoint import file_sha256, read_metadata

    meta = read_metadata(checkpoint)
    if "input_spec" not in meta or "output_channels" not in meta:
        return None
    path = cache_dir() / f"{meta['name']}-{checkpoint_key(sha256, moe_capacity)}.onnx"
    if not _sealed(path) or file_sha256(checkpoint) != sha256.lower():
        return None
    config = json.loads(meta["config"])
    if moe_capacity is not None and "capacity_factor_eval" in config:
        config["capacity_factor_eval"] = float(moe_capacity)
    return BuildingModel(
        OrtNet(path),
        name=meta["name"],
        config=config,
        input_spec=InputSpec.from_dict(json.loads(meta["input_spec"])),
        output_channels=tuple(json.loads(meta["output_channels"])),
    ).eval()


def _model_key(model: nn.Module) -> str:
    digest = hashlib.sha256()
    meta = {
        "name": getattr(model, "name", type(model).__name__),
        "config": getattr(model, "config", None),
        "torch": torch.__version__,
        "opset": _OPSET,
        "export": _EXPORT_VERSION,
    }
    digest.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def _sizes(model: nn.Module) -> tuple[int, int]:
    spec = getattr(model, "input_spec", None)
    divisor = max(1, int(getattr(spec, "divisor", 1)))
    return int(getattr(spec, "bands", 3)), math.lcm(64, divisor)


def export_onnx(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Export ``model.net`` to ONNX with a dynamic batch, height and width (written atomically).

    Args:
        model: a ``BuildingModel`` in eval mode, on the CPU.
        path: where to write the ``.onnx`` file.

    Returns:
        The path.
    """
    bands, step = _sizes(model)
    example = torch.rand(1, bands, 2 * step, 2 * step)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".onnx.tmp")
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
            torch.onnx.export(
                model.net,
                (example,),
                tmp,
                dynamo=False,
                input_names=["x"],
                output_names=["logits"],
                dynamic_axes={"x": {0: "batch", 2: "height", 3: "width"}},
                opset_version=_OPSET,
            )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _agrees(model: nn.Module, net: nn.Module) -> bool:
    """Compare ``net`` with ``model.net`` on a random batch of another size than the export's."""
    bands, step = _sizes(model)
    x = torch.rand(2, bands, 3 * step, 2 * step, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = model.net(x)
        got = net(x)
    return got.shape == want.shape and torch.allclose(got, want, atol=_CHECK_ATOL, rtol=_CHECK_RTOL)


def to_onnxruntime(model: nn.Module, key: str | None = None) -> nn.Module:
    """Return ``model`` with its network running in ONNX Runtime (the export is cached).

    Args:
        model: a ``BuildingModel`` in eval mode, on the CPU.
        key: the cache key (:func:`checkpoint_key`); None hashes the weights and config.

    Returns:
        The same wrapper object, whose ``net`` is now an :class:`OrtNet`.

    Raises:
        RuntimeError: if the export fails or the converted network disagrees with PyTorch.
    """
    path = cache_dir() / f"{getattr(model, 'name', 'model')}-{key or _model_key(model)}.onnx"
    if _sealed(path):
        model.net = OrtNet(path)
        return model
    export_onnx(model, path)
    net = OrtNet(path)
    if not _agrees(model, net):
        raise RuntimeError(f"the ONNX export of {getattr(model, 'name', 'the model')} differs")
    _write_seal(path)
    model.net = net
    return model


def prepare_model(
    model: nn.Module,
    device: str | torch.device = "cpu",
    *,
    bf16: bool = False,
    backend: str = "auto",
    cache_key: str | None = None,
) -> tuple[nn.Module, str]:
    """Make a loaded model fast for inference on ``device`` without changing what it computes.

    Args:
        model: a ``BuildingModel`` in eval mode, already on ``device``.
        device: where it runs.
        bf16: whether it will run under bfloat16 autocast (ONNX Runtime is then not used).
        backend: ``"auto"`` (ONNX Runtime on a CPU when installed and the network exports,
            else PyTorch), ``"torch"``, or ``"onnxruntime"`` (an error if it cannot be used).
        cache_key: the conversion's cache key (:func:`checkpoint_key`); None hashes the weights.

    Returns:
        The model and the backend it now runs on: ``"onnxruntime"``, ``"torch"`` or
        ``"torch-channels-last"``.

    Raises:
        ConfigError: for an unknown backend, or ``"onnxruntime"`` where it cannot run
            (not installed, a GPU, bf16, or a network that does not convert).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    on_cpu = torch.device(device).type == "cpu"
    if backend == "onnxruntime" and not (on_cpu and not bf16 and onnxruntime_available()):
        raise ConfigError(
            "backend 'onnxruntime' runs fp32 on a CPU and needs the onnxruntime and onnx "
            "packages (pip install onnxruntime onnx); use backend 'auto' or 'torch' here"
        )
    if backend != "torch" and on_cpu and not bf16 and onnxruntime_available():
        try:
            return to_onnxruntime(model, cache_key), "onnxruntime"
        except Exception as exc:  # noqa: BLE001 - any failure keeps PyTorch, which always works
            if backend == "onnxruntime":
                raise ConfigError(
                    f"model {getattr(model, 'name', '?')} cannot run in ONNX Runtime "
                    f"({type(exc).__name__}: {str(exc)[:300]}); use backend 'auto' or 'torch'"
                ) from exc
            warnings.warn(
                f"ONNX Runtime is installed but model {getattr(model, 'name', '?')} could not "
                f"use it ({type(exc).__name__}: {str(exc)[:300]}); running it in PyTorch",
                stacklevel=2,
            )
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return model.to(memory_format=torch.channels_last), "torch-channels-last"
    return model, "torch"


__all__ = [
    "BACKENDS",
    "OrtNet",
    "cache_dir",
    "checkpoint_key",
    "export_onnx",
    "load_cached",
    "native_bf16",
    "onnxruntime_available",
    "prepare_model",
    "to_onnxruntime",
]
