"""A model exported to ONNX, run by ONNX Runtime on numpy arrays: inference without PyTorch.

An export made by :mod:`.onnx_backend` carries, in the ONNX file's own metadata (key
``open_buildings``), what the model wrapper needs: the model's name and config, its input
contract, its output channels, its padding mode and the sha256 of the checkpoint it was exported
from. :class:`OnnxModel` is :class:`~open_buildings.models.base.BuildingModel`'s forward in numpy
(normalise, pad to the divisor, run, crop), so ``runtime.run_model`` treats both alike.

A checkpoint may ship its export beside it (``weights.onnx`` next to ``weights.safetensors``,
with a ``.sha256`` sidecar): :func:`open_beside` opens it, which is how the light install (no
PyTorch) runs the default model.
"""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from open_buildings.errors import CheckpointError
from open_buildings.models.checkpoint_meta import file_sha256, read_sidecar, sidecar_path
from open_buildings.models.input_spec import InputSpec
from open_buildings.models.padding import pad_array, padded_shape

#: The ONNX metadata key under which an export records its model (JSON).
META_KEY = "open_buildings"


def onnxruntime_available() -> bool:
    """Return True when ``onnxruntime`` can be imported."""
    return importlib.util.find_spec("onnxruntime") is not None


class OnnxModel:
    """An exported model run by an ONNX Runtime session, with the model wrapper's contract.

    Args:
        path: the ``.onnx`` file written by ``onnx_backend.export_onnx``.
        threads: intra-op threads (ONNX Runtime's own choice, the physical cores, by default).

    Raises:
        CheckpointError: the file is not an ONNX model, or not one this project exported.
    """

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or 0)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = str(path)
        try:
            self.session = ort.InferenceSession(
                self.path, options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # noqa: BLE001 - ORT raises its own untyped errors
            raise CheckpointError(
                f"{path} is not a readable ONNX model ({str(exc)[:200]}); export it again with "
                "`ob-models export-onnx CHECKPOINT`"
            ) from None
        self._input = self.session.get_inputs()[0].name
        text = self.session.get_modelmeta().custom_metadata_map.get(META_KEY)
        if text is None:
            raise CheckpointError(
                f"{path} is an ONNX model but not one open_buildings exported (no "
                f"'{META_KEY}' metadata); export it with `ob-models export-onnx CHECKPOINT`"
            )
        info: dict[str, Any] = json.loads(text)
        self.name: str = info["name"]
        self.config: dict[str, Any] = info["config"]
        self.input_spec = InputSpec.from_dict(info["input_spec"])
        self.output_channels: tuple[str, ...] = tuple(info["output_channels"])
        self.pad_mode: str = info.get("pad_mode", "reflect")
        self.checkpoint_sha256: str | None = info.get("checkpoint_sha256")
        shape = (1, self.input_spec.bands, 1, 1)
        self._mean = np.asarray(self.input_spec.mean, dtype=np.float32).reshape(shape)
        self._std = np.asarray(self.input_spec.std, dtype=np.float32).reshape(shape)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits ``(B, C, H, W)`` float32 of a ``(B, bands, H, W)`` batch scaled to [0, 1]."""
        if x.ndim != 4 or x.shape[1] != self.input_spec.bands:
            raise ValueError(
                f"model {self.name} expects a (B, {self.input_spec.bands}, H, W) batch, got "
                f"{x.shape}; map the bands with --bands"
            )
        height, width = x.shape[-2:]
        x = (x.astype(np.float32, copy=False) - self._mean) / self._std
        mode = "constant" if self.pad_mode == "constant" else "reflect"
        size = padded_shape(height, width, self.input_spec.divisor)
        x, (top, left) = pad_array(x, *size, mode=mode, centre=True)
        out = self.session.run(None, {self._input: np.ascontiguousarray(x, dtype=np.float32)})[0]
        return out[..., top : top + height, left : left + width]

    def __repr__(self) -> str:
        """Name the model and its ONNX file."""
        return f"OnnxModel(name={self.name!r}, path={self.path!r})"


def export_path(checkpoint: str | os.PathLike[str]) -> Path:
    """Where a checkpoint's shipped ONNX export lives: ``<stem>.onnx`` beside it."""
    return Path(checkpoint).with_suffix(".onnx")


def open_beside(checkpoint: str | os.PathLike[str], checkpoint_sha256: str) -> OnnxModel | None:
    """Open the ONNX export shipped beside a checkpoint, if there is one for these weights.

    Args:
        checkpoint: the local ``.safetensors`` file.
        checkpoint_sha256: the sha256 the checkpoint has (already checked by the caller, or
            about to be): an export made from other weights is not used.

    Returns:
        The model, or None when no export is there or it was made from another checkpoint
        (warned about: the caller then converts the checkpoint itself).

    Raises:
        CheckpointError: the export is there but damaged (its sha256 sidecar disagrees) or has
            no sidecar.
    """
    path = export_path(checkpoint)
    if not path.is_file():
        return None
    if not sidecar_path(path).is_file():
        raise CheckpointError(
            f"{path} has no sha256 sidecar ({sidecar_path(path).name}), so it cannot be checked; "
            "export it again with `ob-models export-onnx`, or delete it"
        )
    if file_sha256(path) != read_sidecar(path):
        raise CheckpointError(
            f"{path} does not match its sha256 sidecar: the file is damaged. Reinstall the "
            "package, export it again with `ob-models export-onnx`, or delete it"
        )
    model = OnnxModel(path)
    if model.checkpoint_sha256 != checkpoint_sha256.lower():
        warnings.warn(
            f"{path.name} was exported from another checkpoint than {Path(checkpoint).name} "
            "(the sha256 it records differs); it is not used. Export it again with "
            "`ob-models export-onnx`",
            stacklevel=2,
        )
        return None
    return model
