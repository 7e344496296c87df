"""Exporting a PyTorch model to ONNX: export once, check against PyTorch, cache, reload sealed.

ONNX Runtime runs the default U-Net about 2x faster than PyTorch in channels_last on an AVX2 CPU
(``bench/README.md``; it folds batch norms into convolutions and fuses activations). A converted
network is checked against PyTorch on a random batch whose size differs from the export's before
it is used; if they disagree it is not used. The ONNX file is cached (``$OPEN_BUILDINGS_CACHE`` or
``~/.cache/open_buildings``) under a key made of the checkpoint's sha256 (or the weights), the
config and the library versions, and sealed with its own sha256 once checked, so a worker pays the
export once. :func:`load_cached` then opens the sealed file alone as an
:class:`~.onnx_model.OnnxModel` (the export records the model's contract): it never builds the
PyTorch network, so a worker does not import timm and segmentation_models_pytorch (seconds of
start-up). :func:`export_beside` writes the export a checkpoint ships with (``weights.onnx``),
which the light install runs without PyTorch.
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

from open_buildings.models.checkpoint_meta import (
    file_sha256,
    sidecar_matches,
    sidecar_path,
    write_sidecar,
)
from open_buildings.pipelines.onnx_model import (
    META_KEY,
    OnnxModel,
    export_path,
    onnxruntime_available,
)

#: Bump to invalidate every cached ONNX file (e.g. when the export recipe changes).
_EXPORT_VERSION = 2
_OPSET = 17
_CHECK_ATOL = 1e-3
_CHECK_RTOL = 1e-4


def conversion_available() -> bool:
    """Return True when ``onnxruntime`` and ``onnx`` (which the exporter needs) can be imported."""
    return onnxruntime_available() and importlib.util.find_spec("onnx") is not None


def cache_dir() -> Path:
    """Return the folder for converted models (``$OPEN_BUILDINGS_CACHE`` or ``~/.cache``)."""
    root = os.environ.get("OPEN_BUILDINGS_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "open_buildings"
    return base / "onnx"


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


def load_cached(
    checkpoint: str | os.PathLike[str],
    sha256: str | None,
    *,
    moe_capacity: float | None = None,
    device: str | torch.device = "cpu",
    bf16: bool = False,
    backend: str = "auto",
) -> OnnxModel | None:
    """Return the model's sealed ONNX conversion, without building the PyTorch network.

    Args:
        checkpoint: the local ``.safetensors`` file.
        sha256: its expected sha256 (checked here); None skips this path.
        moe_capacity: the eval capacity the conversion was made at.
        device: where the model will run (only a CPU uses ONNX Runtime).
        bf16: bfloat16 autocast asked for (ONNX Runtime is then not used).
        backend: as for :func:`prepare_model`.

    Returns:
        The :class:`~.onnx_model.OnnxModel`, or None when this path does not
        apply (no conversion cached yet, another backend or device, a checkpoint that does not
        match ``sha256``: the caller then loads it the full way, which reports the problem).
    """
    if backend == "torch" or bf16 or torch.device(device).type != "cpu" or not sha256:
        return None
    if moe_capacity is not None:  # only V-MoE takes a capacity, and it does not export
        return None
    if not conversion_available():
        return None
    from open_buildings.models.checkpoint_meta import read_metadata

    meta = read_metadata(checkpoint)
    path = cache_dir() / f"{meta['name']}-{checkpoint_key(sha256, moe_capacity)}.onnx"
    if not sidecar_matches(path) or file_sha256(checkpoint) != sha256.lower():
        return None
    return OnnxModel(path)


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


def export_onnx(
    model: nn.Module, path: str | os.PathLike[str], *, checkpoint_sha256: str | None = None
) -> Path:
    """Export ``model.net`` to ONNX with a dynamic batch, height and width (written atomically).

    The file's metadata (key ``open_buildings``) records the wrapper's contract, so
    :class:`~.onnx_model.OnnxModel` runs it without the checkpoint or PyTorch.

    Args:
        model: a ``BuildingModel`` in eval mode, on the CPU.
        path: where to write the ``.onnx`` file.
        checkpoint_sha256: the sha256 of the checkpoint the model was loaded from, recorded so
            that an export shipped beside a checkpoint is only used with those weights.

    Returns:
        The path.
    """
    import onnx

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
        proto = onnx.load(tmp)
        onnx.helper.set_model_props(
            proto, {META_KEY: json.dumps(_contract(model, checkpoint_sha256))}
        )
        onnx.save(proto, tmp)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shipped export from other users
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _contract(model: nn.Module, checkpoint_sha256: str | None) -> dict[str, object]:
    """What :class:`~.onnx_model.OnnxModel` needs to stand in for the ``BuildingModel``."""
    return {
        "name": model.name,
        "config": model.config,
        "input_spec": model.input_spec.to_dict(),
        "output_channels": list(model.output_channels),
        "pad_mode": model.pad_mode,
        "checkpoint_sha256": checkpoint_sha256.lower() if checkpoint_sha256 else None,
    }


def _agrees(model: nn.Module, converted: OnnxModel) -> bool:
    """Compare the export with the model on a random batch of another size than the export's."""
    bands, step = _sizes(model)
    x = torch.rand(2, bands, 3 * step, 2 * step, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = model(x).float().numpy()
    got = converted(x.numpy())
    return got.shape == want.shape and np.allclose(got, want, atol=_CHECK_ATOL, rtol=_CHECK_RTOL)


def to_onnxruntime(model: nn.Module, key: str | None = None) -> OnnxModel:
    """Return ``model`` converted to run in ONNX Runtime (the export is cached).

    Args:
        model: a ``BuildingModel`` in eval mode, on the CPU.
        key: the cache key (:func:`checkpoint_key`); None hashes the weights and config.

    Returns:
        The :class:`~.onnx_model.OnnxModel`.

    Raises:
        RuntimeError: if the export fails or the converted network disagrees with PyTorch.
    """
    path = cache_dir() / f"{getattr(model, 'name', 'model')}-{key or _model_key(model)}.onnx"
    if sidecar_matches(path):
        return OnnxModel(path)
    export_onnx(model, path)
    converted = OnnxModel(path)
    if not _agrees(model, converted):
        raise RuntimeError(f"the ONNX export of {getattr(model, 'name', 'the model')} differs")
    write_sidecar(path)
    return converted


def export_beside(checkpoint: str | os.PathLike[str]) -> Path:
    """Write the ONNX export a checkpoint ships with: ``<stem>.onnx`` and its sha256 sidecar.

    The checkpoint is loaded (its sidecar checked), exported, and the export is checked against
    PyTorch before the sidecar that makes it usable is written.

    Args:
        checkpoint: the ``.safetensors`` file.

    Returns:
        The ``.onnx`` path.

    Raises:
        RuntimeError: if the export disagrees with PyTorch (nothing usable is left behind).
    """
    from open_buildings.models.checkpoint import load_checkpoint

    model = load_checkpoint(checkpoint)
    target = export_path(checkpoint)
    sidecar_path(target).unlink(missing_ok=True)
    export_onnx(model, target, checkpoint_sha256=file_sha256(checkpoint))
    if not _agrees(model, OnnxModel(target)):
        target.unlink()
        raise RuntimeError(f"the ONNX export of {checkpoint} differs from PyTorch; not kept")
    write_sidecar(target)
    return target
