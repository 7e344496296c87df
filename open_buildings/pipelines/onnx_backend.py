"""ONNX Runtime for a CPU worker: export once, check against PyTorch, cache, reload sealed.

ONNX Runtime runs the default U-Net about 2x faster than PyTorch in channels_last on an AVX2 CPU
(``bench/README.md``; it folds batch norms into convolutions and fuses activations). A converted
network is checked against PyTorch on a random batch whose size differs from the export's before
it is used; if they disagree it is not used. The ONNX file is cached (``$OPEN_BUILDINGS_CACHE`` or
``~/.cache/open_buildings``) under a key made of the checkpoint's sha256 (or the weights), the
config and the library versions, and sealed with its own sha256 once checked, so a worker pays the
export once. :func:`load_cached` then rebuilds the model from the checkpoint's metadata and the
sealed file alone (``models.checkpoint.rebuild_model``): it never builds the PyTorch network, so a
worker does not import timm and segmentation_models_pytorch (seconds of start-up).
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

#: Bump to invalidate every cached ONNX file (e.g. when the export recipe changes).
_EXPORT_VERSION = 1
_OPSET = 17
_CHECK_ATOL = 1e-3
_CHECK_RTOL = 1e-4


def onnxruntime_available() -> bool:
    """Return True when ``onnxruntime`` (and ``onnx``, which the exporter needs) can be imported."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


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
    if moe_capacity is not None:  # only V-MoE takes a capacity, and it does not export
        return None
    if not onnxruntime_available():
        return None
    from open_buildings.models.checkpoint import file_sha256, read_metadata, rebuild_model

    meta = read_metadata(checkpoint)
    if "input_spec" not in meta or "output_channels" not in meta:
        return None
    path = cache_dir() / f"{meta['name']}-{checkpoint_key(sha256, moe_capacity)}.onnx"
    if not _sealed(path) or file_sha256(checkpoint) != sha256.lower():
        return None
    return rebuild_model(meta, source=checkpoint, net=OrtNet(path)).eval()


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
