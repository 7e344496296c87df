"""How the model runs on a worker: which checkpoint, which device, which backend, and the call.

:func:`resolve_model` finds the checkpoint ``--model`` names; :func:`load_model` loads it on a
worker (sha256 checked; the MoE capacity set; a sealed ONNX conversion reused without building
the PyTorch network, see :mod:`.onnx_backend`); :func:`run_model` runs it on tiles of any size.

On a CPU, :func:`prepare_model` runs the network through ONNX Runtime when ``onnxruntime`` is
installed; without it, or for a network that does not export, it keeps PyTorch and puts
convolutional networks in ``channels_last`` (about 1.4x faster than contiguous). Either way the
:class:`~open_buildings.models.base.BuildingModel` wrapper stays, so normalisation, padding and
cropping are the same code; only ``model.net`` is replaced.

bfloat16 is only worth it where the hardware has it: :func:`native_bf16` says whether this CPU
(AVX512-BF16 or AMX) or GPU does. On an AVX2-only CPU, PyTorch runs bf16 convolutions through a
reference kernel about 100x slower than fp32 (``python -m bench.speedups``). A worker told to use
a GPU that has none raises instead of quietly running on its CPU.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from open_buildings.errors import CheckpointError, ConfigError, InferenceError
from open_buildings.pipelines import onnx_model
from open_buildings.pipelines.config import RuntimeConfig
from open_buildings.pipelines.forward import PAD_MULTIPLE, run_model
from open_buildings.pipelines.torch_runtime import (
    BACKENDS,
    native_bf16,
    prepare_model,
    torch_available,
)
from open_buildings.remote import is_remote, local_copy, read_remote_text

__all__ = [
    "BACKENDS",
    "PAD_MULTIPLE",
    "ModelRef",
    "TileInput",
    "check_runnable",
    "load_model",
    "native_bf16",
    "prepare_model",
    "resolve_device",
    "resolve_min_confidence",
    "resolve_model",
    "run_model",
    "torch_available",
    "zoo_models",
]

WEIGHTS_NAME = "weights.safetensors"
DEFAULT_MODEL = "default"


@dataclass(frozen=True)
class TileInput:
    """A tile's pixels as the model handler receives them.

    Attributes:
        rgb: uint8 array (3, H, W).
        valid: bool array (H, W); False where the imagery has no data.
    """

    rgb: np.ndarray
    valid: np.ndarray


@dataclass(frozen=True)
class ModelRef:
    """A checkpoint the pipeline will run.

    Attributes:
        name: what the user asked for (a zoo name or a path).
        path: the ``.safetensors`` file (local path or URL).
        sha256: its expected sha256, or None to use its ``.sha256`` sidecar on the worker.
        moe_capacity: the eval capacity factor to set on a V-MoE model's expert layers; None
            keeps the checkpoint's.
    """

    name: str
    path: str
    sha256: str | None
    moe_capacity: float | None = None


def zoo_models() -> list[str]:
    """Return the names of the shipped models that have weights (``models/<name>/``)."""
    from open_buildings.resources import resource

    root = resource("models")
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.joinpath(WEIGHTS_NAME).is_file())


def resolve_model(
    spec: str, sha256: str | None = None, *, moe_capacity: float | None = None
) -> ModelRef:
    """Find the checkpoint for ``--model``: a zoo name, a ``.safetensors`` file, or a folder.

    Args:
        spec: ``"default"`` or another zoo name, a local path, or a ``gs://`` URL.
        sha256: the expected sha256; None computes it for a local file.
        moe_capacity: the eval capacity factor for a V-MoE model's expert layers (``None``
            keeps the checkpoint's); a local checkpoint without expert layers is refused here.

    Returns:
        The reference.

    Raises:
        InferenceError: if nothing matches (the message lists the zoo and how to pass a path),
            or ``moe_capacity`` is given for a local checkpoint without expert layers.
    """
    from open_buildings.models.checkpoint_meta import file_sha256
    from open_buildings.resources import resource

    if is_remote(spec):
        return ModelRef(spec, spec, sha256, moe_capacity)
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.is_file() and "/" not in spec and os.sep not in spec:
        shipped = resource("models", spec, WEIGHTS_NAME)
        if shipped.is_file():
            path = Path(str(shipped))
    if path.is_file():
        if moe_capacity is not None:
            _check_has_experts(spec, path)
        return ModelRef(spec, str(path), sha256 or file_sha256(path), moe_capacity)
    available = zoo_models()
    zoo = f"shipped models: {', '.join(available)}" if available else "no model is shipped yet"
    if spec == DEFAULT_MODEL:
        raise InferenceError(
            "the default model (models/default/weights.safetensors) is not there yet "
            f"({zoo}). Pass --model PATH to a checkpoint .safetensors (one written by ob-train "
            "or models.checkpoint.save_checkpoint)"
        )
    raise InferenceError(
        f"--model {spec!r} is neither a checkpoint file, a folder holding {WEIGHTS_NAME}, nor a "
        f"shipped model ({zoo}); pass a path to a .safetensors checkpoint"
    )


def _check_has_experts(spec: str, path: Path) -> None:
    """Refuse a MoE capacity for a checkpoint whose model has no expert layers."""
    import torch

    from open_buildings.models.checkpoint import read_metadata, rebuild_model
    from open_buildings.models.moe import moe_layers

    metadata = read_metadata(path)
    try:
        with torch.device("meta"):  # no memory, no init
            model = rebuild_model(metadata, source=path)
    except RuntimeError:  # a builder that needs real tensors (smp's MiT calls .item())
        model = rebuild_model(metadata, source=path)
    if not moe_layers(model):
        raise InferenceError(
            f"--moe-capacity applies to V-MoE models only, but --model {spec} is a "
            f"{metadata['name']} checkpoint, which has no mixture-of-experts layers; drop "
            "--moe-capacity"
        )


def resolve_min_confidence(model: ModelRef, requested: float | str) -> tuple[float, str]:
    """Turn ``min_confidence`` into the number the workers apply, and say where it came from.

    Args:
        model: the checkpoint (a remote one is copied here to read its metadata).
        requested: a number (the user's), or ``"auto"``: the checkpoint's best-F1 operating
            point (``models.checkpoint.read_operating_points``).

    Returns:
        ``(threshold, source)``; ``"auto"`` for a checkpoint without operating points is 0 (every
        footprint is written), and the source says so.
    """
    from open_buildings.models.checkpoint_meta import read_operating_points

    if not isinstance(requested, str):
        return float(requested), "set by the user"
    local, _ = _localize(model.path)
    points = read_operating_points(local)
    if points is None:
        return 0.0, (
            f"none: {model.name} carries no operating points, so every footprint is written; "
            "calibrate it with ob-calibrate, or pass --min-confidence"
        )
    best = points["best_f1"]
    return float(best["threshold"]), (
        f"the model's best-F1 operating point (F1 {best['f1']:.3f}, precision "
        f"{best['precision']:.3f}, recall {best['recall']:.3f} on {points['measured_on']})"
    )


def model_input_ranges(model: ModelRef) -> dict[str, Any] | None:
    """The checkpoint's training-imagery ranges (``models.checkpoint.read_input_ranges``)."""
    from open_buildings.models.checkpoint_meta import read_input_ranges

    return read_input_ranges(_localize(model.path)[0])


@functools.lru_cache(maxsize=8)  # the driver reads a remote checkpoint's metadata twice
def _localize(path: str) -> tuple[str, str | None]:
    """Return a local copy of a checkpoint and the sha256 its remote ``.sha256`` sidecar gives."""
    if not is_remote(path):
        return path, None
    sidecar = read_remote_text(path + ".sha256")
    return local_copy(path, prefix="ob-model-"), sidecar.split()[0] if sidecar else None


def load_model(model: ModelRef, runtime: RuntimeConfig) -> tuple[Any, str, Any]:
    """Load a checkpoint on this worker, ready to run: the one loading path of every job.

    On a CPU in fp32 (backend ``auto`` or ``onnxruntime``), an ONNX export shipped beside the
    checkpoint for these weights runs without PyTorch (:func:`.onnx_model.open_beside`); next a
    sealed conversion in the cache; otherwise PyTorch loads the checkpoint and converts it.

    Args:
        model: the checkpoint (its sha256 is checked here).
        runtime: device, bf16 and backend.

    Returns:
        The model (an :class:`~.onnx_model.OnnxModel` or a ``BuildingModel``), the backend it
        runs on (see :func:`prepare_model`) and its device.

    Raises:
        InferenceError: if the device is ``"cuda"`` and this worker has no GPU, or the model
            needs PyTorch and it is not installed.
        CheckpointError: if the file is not the expected checkpoint.
    """
    from open_buildings.models.checkpoint_meta import file_sha256

    device = resolve_device(runtime.device)
    local, sidecar = _localize(model.path)
    expected = model.sha256 or sidecar
    capacity = model.moe_capacity
    int8 = runtime.backend == "onnxruntime-int8"
    fits = _onnx_fits(runtime, capacity)
    export = onnx_model.export_path(
        local, onnx_model.OnnxInt8Model if int8 else onnx_model.OnnxModel
    )
    if int8 and not (fits and export.is_file()):
        raise ConfigError(
            f"backend onnxruntime-int8 runs the int8 export beside the checkpoint "
            f"({export.name}) on a CPU in fp32, and {local} has none: write it with "
            "`ob-models quantize-int8 CHECKPOINT --imagery SRC`"
        )
    if fits and export.is_file():
        actual = file_sha256(local)
        if expected and actual != expected.lower():
            raise CheckpointError(
                f"sha256 mismatch for {local}: expected {expected.lower()}, got {actual}; the "
                "checkpoint is damaged or was replaced: copy it again"
            )
        shipped = _open_export(local, actual, runtime.backend)
        if shipped is not None:
            return shipped, shipped.backend, device
        if int8:
            raise ConfigError(
                f"the int8 export beside {local} was made from other weights; write it again "
                "with `ob-models quantize-int8`"
            )
    check_runnable(model, runtime, local)
    return _load_with_torch(local, expected, capacity, runtime, device)


def export_runtime(backend: str) -> type[onnx_model.OnnxModel]:
    """Which runtime runs a shipped ONNX export on this CPU for ``backend``.

    ``auto`` takes OpenVINO in bfloat16 where this CPU computes bf16 natively (measured: the same
    F1 on the validation blocks, about 2x faster, ``bench/README.md``) and ONNX Runtime in fp32
    everywhere else; ``onnxruntime`` and ``openvino-bf16`` ask for one.

    Raises:
        ConfigError: ``openvino-bf16`` where OpenVINO or native bf16 is missing.
    """
    if backend == "onnxruntime-int8":
        return onnx_model.OnnxInt8Model
    bf16 = onnx_model.openvino_bf16_available() if backend in ("auto", "openvino-bf16") else False
    if backend == "openvino-bf16" and not bf16:
        raise ConfigError(
            "backend 'openvino-bf16' needs the openvino package and a CPU with native bfloat16 "
            "(AVX512-BF16 or AMX); this one has neither or one of them only. Use backend auto"
        )
    return onnx_model.OpenVinoBf16Model if bf16 else onnx_model.OnnxModel


def _open_export(local: str, sha256: str, backend: str) -> onnx_model.OnnxModel | None:
    """The shipped export in the runtime ``backend`` picks; OpenVINO failing under ``auto``
    falls back to ONNX Runtime with a warning (an explicit ``openvino-bf16`` raises)."""
    engine = export_runtime(backend)
    try:
        return onnx_model.open_beside(local, sha256, engine)
    except CheckpointError:
        if engine is onnx_model.OnnxModel or backend != "auto":
            raise
        warnings.warn(
            "OpenVINO could not load the model's ONNX export in bf16 here; running it in ONNX "
            "Runtime fp32 instead (--backend onnxruntime skips the attempt)",
            stacklevel=3,
        )
        return onnx_model.open_beside(local, sha256)


def _onnx_fits(runtime: RuntimeConfig, moe_capacity: float | None) -> bool:
    """Whether ONNX Runtime may run the model: a CPU, fp32, no MoE capacity, not ``torch``."""
    return (
        runtime.backend != "torch"
        and runtime.device == "cpu"
        and not runtime.bf16
        and moe_capacity is None  # only V-MoE takes a capacity, and it does not export
        and onnx_model.onnxruntime_available()
    )


def check_runnable(model: ModelRef, runtime: RuntimeConfig, local: str | None = None) -> None:
    """Refuse, before any work, a model this install cannot run.

    Without PyTorch (the light install) only an ONNX export shipped beside a local checkpoint
    runs, on a CPU in fp32.

    Args:
        model: the checkpoint.
        runtime: device, bf16 and backend.
        local: the checkpoint's local copy, when already made.

    Raises:
        InferenceError: PyTorch is needed and not installed (the message says what to install).
    """
    if torch_available():
        return
    path = local or (None if is_remote(model.path) else model.path)
    export = onnx_model.export_path(path) if path else None
    if not (export is not None and export.is_file() and _onnx_fits(runtime, model.moe_capacity)):
        where = export.name if export else "<checkpoint>.onnx"
        raise InferenceError(
            f"model {model.name} needs PyTorch here, which is not installed: it has no ONNX "
            f"export beside it ({where}) to run on a CPU in fp32"
            + ("" if onnx_model.onnxruntime_available() else " (and onnxruntime is missing)")
            + ". Install the full package (pip install 'open-buildings-pipeline[train]'), or "
            "export the model where PyTorch is installed: ob-models export-onnx CHECKPOINT"
        )


def _load_with_torch(
    local: str, expected: str | None, capacity: float | None, runtime: RuntimeConfig, device: Any
) -> tuple[Any, str, Any]:
    """:func:`load_model`'s path through PyTorch: the cache, or load, convert and cache."""
    from open_buildings.models.checkpoint import load_checkpoint
    from open_buildings.pipelines import onnx_backend

    cached = onnx_backend.load_cached(
        local,
        expected,
        moe_capacity=capacity,
        device=device,
        bf16=runtime.bf16,
        backend=runtime.backend,
    )
    if cached is not None:
        return cached, "onnxruntime", device
    net = load_checkpoint(local, expected_sha256=expected, moe_capacity=capacity)
    net.to(device).eval()
    key = onnx_backend.checkpoint_key(expected, capacity) if expected else None
    net, used = prepare_model(
        net, device, bf16=runtime.bf16, backend=runtime.backend, cache_key=key
    )
    if runtime.bf16 and runtime.device == "cpu" and not native_bf16(device):
        warnings.warn(
            "bf16 was asked for, but this CPU has no native bfloat16 (no AVX512-BF16 or AMX): "
            "convolutions fall back to a slow reference kernel, 16-136x slower than fp32 "
            "(bench/models.py). Drop --bf16 on this machine.",
            stacklevel=2,
        )
    return net, used, device


def resolve_device(device: str) -> Any:
    """Return the device to run on, failing loudly when a GPU was expected but is missing.

    Args:
        device: ``"cpu"`` or ``"cuda"``.

    Returns:
        The ``torch.device``; without PyTorch (the light install) the string ``"cpu"``.

    Raises:
        InferenceError: if ``device`` is ``"cuda"`` and torch sees no GPU, or is unknown.
    """
    if device not in ("cpu", "cuda"):
        raise InferenceError(f"unknown device {device!r}; use 'cpu' or 'cuda'")
    if not torch_available():
        if device == "cpu":
            return "cpu"
        raise InferenceError(
            "this machine was asked to run the model on a GPU (device 'cuda'), but PyTorch is "
            "not installed (the light install runs on the CPU only). Install "
            "'open-buildings-pipeline[train]' with a CUDA build of torch, or run with --device cpu"
        )
    import torch

    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise InferenceError(
            "this machine was asked to run the model on a GPU (device 'cuda'), but torch sees "
            f"none (torch {torch.__version__}, built for CUDA {torch.version.cuda}). It will "
            "not fall back to the CPU silently. Check the worker's accelerator and driver "
            "(Dataflow: gpu_type/gpu_count and the CUDA image from deploy/), or run with "
            "--device cpu"
        )
    return torch.device("cuda")
