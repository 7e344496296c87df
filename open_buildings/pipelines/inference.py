"""The model side of the pipeline: finding a checkpoint, and Beam's RunInference handler for it.

:class:`CheckpointModelHandler` is a ``PytorchModelHandlerTensor`` whose model comes from a
safetensors checkpoint (``models.checkpoint.load_checkpoint``, sha256 checked) rather than from a
pickled state dict, and whose inference function handles tiles of slightly different sizes, bf16
autocast and CUDA. A worker that was told to use a GPU and has none raises instead of quietly
running on its CPU.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.ml.inference.pytorch_inference import PytorchModelHandlerTensor

from open_buildings.errors import InferenceError
from open_buildings.pipelines import runtime, stages

WEIGHTS_NAME = "weights.safetensors"
DEFAULT_MODEL = "default"


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
    from open_buildings.models.checkpoint import file_sha256
    from open_buildings.resources import resource

    if stages.is_remote(spec):
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
    import json

    from open_buildings.models.checkpoint import read_metadata
    from open_buildings.models.moe import moe_layers
    from open_buildings.models.registry import build_model

    metadata = read_metadata(path)
    config = json.loads(metadata["config"])
    try:
        with torch.device("meta"):  # no memory, no init
            model = build_model(metadata["name"], **config)
    except RuntimeError:  # a builder that needs real tensors (smp's MiT calls .item())
        model = build_model(metadata["name"], **config)
    if not moe_layers(model):
        raise InferenceError(
            f"--moe-capacity applies to V-MoE models only, but --model {spec} is a "
            f"{metadata['name']} checkpoint, which has no mixture-of-experts layers; drop "
            "--moe-capacity"
        )


def _localize(path: str) -> tuple[str, str | None]:
    """Return a local copy of a checkpoint (and of its sidecar, if any) for ``load_checkpoint``."""
    if not stages.is_remote(path):
        return path, None
    from apache_beam.io.filesystems import FileSystems

    folder = tempfile.mkdtemp(prefix="ob-model-")
    local = os.path.join(folder, path.rstrip("/").rsplit("/", 1)[-1])
    with FileSystems.open(path) as source, open(local, "wb") as target:
        for block in iter(lambda: source.read(1 << 22), b""):
            target.write(block)
    sidecar = None
    if FileSystems.exists(path + ".sha256"):
        with FileSystems.open(path + ".sha256") as source:
            sidecar = source.read().decode("ascii").split()[0]
    return local, sidecar


def _never_called(**_: Any) -> None:  # the parent class wants a model class; load_model is ours
    raise InferenceError("CheckpointModelHandler builds its model from the checkpoint")


class CheckpointModelHandler(PytorchModelHandlerTensor):
    """RunInference handler for a safetensors checkpoint; examples are ``stages.TileInput``.

    Args:
        model: the checkpoint to load (its sha256 is checked when the worker loads it).
        device: ``"cpu"`` or ``"cuda"``; ``"cuda"`` raises on a worker without a GPU.
        bf16: run under bfloat16 autocast.
        min_batch_size: the smallest batch to form.
        max_batch_size: the largest batch to form.
        share_model_across_processes: load one model per machine, shared by its processes.
        pad_multiple: tiles are padded to multiples of this (see ``stages.run_model``).
        backend: ``"auto"``, ``"torch"`` or ``"onnxruntime"`` (see ``runtime.prepare_model``).
    """

    def __init__(
        self,
        model: ModelRef,
        *,
        device: str = "cpu",
        bf16: bool = False,
        min_batch_size: int = 1,
        max_batch_size: int = 4,
        share_model_across_processes: bool = False,
        pad_multiple: int = stages.PAD_MULTIPLE,
        backend: str = "auto",
    ) -> None:
        if device not in ("cpu", "cuda"):
            raise InferenceError(f"unknown device {device!r}; use 'cpu' or 'cuda'")
        super().__init__(
            state_dict_path=model.path,
            model_class=_never_called,
            device="GPU" if device == "cuda" else "CPU",
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            large_model=share_model_across_processes,
        )
        self._ref = model
        self._want_device = device
        self._bf16 = bf16
        self._pad_multiple = pad_multiple
        self._backend = backend
        self.backend_used: str | None = None

    def load_model(self) -> Any:
        """Load the checkpoint on this worker (sha256 checked) and move it to the device.

        Raises:
            InferenceError: if the device is ``"cuda"`` and this worker has no GPU.
            CheckpointError: if the file is not the expected checkpoint.
        """
        from open_buildings.models.checkpoint import load_checkpoint

        device = stages.resolve_device(self._want_device)
        local, sidecar = _localize(self._ref.path)
        expected = self._ref.sha256 or sidecar
        self._device = device
        capacity = self._ref.moe_capacity
        cached = runtime.load_cached(
            local,
            expected,
            moe_capacity=capacity,
            device=device,
            bf16=self._bf16,
            backend=self._backend,
        )
        if cached is not None:
            self.backend_used = "onnxruntime"
            return cached
        model = load_checkpoint(local, expected_sha256=expected)
        if capacity is not None:
            from open_buildings.models.moe import set_capacity

            set_capacity(model, capacity)
        model.to(device).eval()
        key = runtime.checkpoint_key(expected, capacity) if expected else None
        model, self.backend_used = runtime.prepare_model(
            model, device, bf16=self._bf16, backend=self._backend, cache_key=key
        )
        if self._bf16 and device.type == "cpu" and not runtime.native_bf16(device):
            warnings.warn(
                "bf16 was asked for, but this CPU has no native bfloat16 (no AVX512-BF16 or AMX): "
                "convolutions fall back to a slow reference kernel, 16-136x slower than fp32 "
                "(bench/models.py). Drop --bf16 on this machine.",
                stacklevel=2,
            )
        return model

    def run_inference(
        self,
        batch: Sequence[stages.TileInput],
        model: Any,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """Return each tile's logits (float32 ``(C, H, W)`` numpy) as a ``PredictionResult``."""
        logits = stages.run_model(
            model,
            [example.rgb for example in batch],
            device=self._device,
            bf16=self._bf16,
            pad_multiple=self._pad_multiple,
        )
        return [PredictionResult(x, y, self._ref.name) for x, y in zip(batch, logits)]

    def get_num_bytes(self, batch: Sequence[stages.TileInput]) -> int:
        """Return the bytes of pixels in a batch (for RunInference's metrics)."""
        return sum(int(example.rgb.nbytes) for example in batch)

    def get_metrics_namespace(self) -> str:
        """Return the namespace of RunInference's own metrics."""
        return "open_buildings_inference"
