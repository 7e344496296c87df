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

import functools
import importlib.util
import json
import os
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
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
    """An exported model run by ONNX Runtime (or OpenVINO), with the model wrapper's contract.

    Args:
        path: the ``.onnx`` file written by ``onnx_backend.export_onnx``.
        threads: intra-op threads (the runtime's own choice, the physical cores, by default).

    Raises:
        CheckpointError: the file is not an ONNX model, or not one this project exported.
    """

    #: What :func:`.runtime.load_model` reports as the backend.
    backend = "onnxruntime"
    #: The file this runtime runs, beside a checkpoint (:func:`export_path`).
    suffix = ".onnx"

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        self.path = str(path)
        try:
            text = self._open(threads)
        except Exception as exc:  # noqa: BLE001 - the runtimes raise their own untyped errors
            raise CheckpointError(
                f"{path} is not a readable ONNX model ({str(exc)[:200]}); export it again with "
                "`ob-models export-onnx CHECKPOINT`"
            ) from None
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

    def _open(self, threads: int | None) -> str | None:
        """Start the runtime on ``self.path``; return the file's ``open_buildings`` metadata."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or 0)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0].name
        return self.session.get_modelmeta().custom_metadata_map.get(META_KEY)

    def _infer(self, x: np.ndarray) -> np.ndarray:
        """The network on a normalised, padded float32 batch."""
        return self.session.run(None, {self._input: x})[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits ``(B, C, H, W)`` float32 of a ``(B, bands, H, W)`` batch scaled to [0, 1]."""
        if x.ndim != 4 or x.shape[1] != self.input_spec.bands:
            raise ValueError(
                f"model {self.name} expects a (B, {self.input_spec.bands}, H, W) batch, got "
                f"{x.shape}; map the bands with --bands"
            )
        height, width = x.shape[-2:]
        x, (top, left) = self.prepare(x)
        out = self._infer(x)
        return out[..., top : top + height, left : left + width]

    def prepare(self, x: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """Normalise a batch scaled to [0, 1] and pad it to the divisor, as the network takes
        it; return it (float32, contiguous) and the ``(top, left)`` padding."""
        height, width = x.shape[-2:]
        x = (x.astype(np.float32, copy=False) - self._mean) / self._std
        mode = "constant" if self.pad_mode == "constant" else "reflect"
        size = padded_shape(height, width, self.input_spec.divisor)
        x, offsets = pad_array(x, *size, mode=mode, centre=True)
        return np.ascontiguousarray(x, dtype=np.float32), offsets

    def __repr__(self) -> str:
        """Name the model, its ONNX file and its runtime."""
        return f"{type(self).__name__}(name={self.name!r}, path={self.path!r})"


class OnnxInt8Model(OnnxModel):
    """The int8 export (``<stem>.int8.onnx``, written by ``ob-models quantize-int8``: static
    quantization calibrated on real tiles, :mod:`.onnx_int8`) in ONNX Runtime."""

    backend = "onnxruntime-int8"
    suffix = ".int8.onnx"


class OpenVinoBf16Model(OnnxModel):
    """The same export compiled by OpenVINO for the CPU in bfloat16.

    Only where the CPU computes bf16 natively (AVX512-BF16 or AMX, as OpenVINO reports it:
    :func:`openvino_bf16_available`); there it runs the default model about 2x faster than ONNX
    Runtime fp32 (``bench/README.md``). The network keeps its dynamic batch, height and width, and
    is compiled once, when opened, so that a CPU OpenVINO cannot compile for fails at load time.
    """

    backend = "openvino-bf16"

    def _open(self, threads: int | None) -> str | None:
        self._core = openvino_core()
        self._network = self._core.read_model(self.path)
        self._config = {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            self._config["INFERENCE_NUM_THREADS"] = int(threads)
        if not self._network.has_rt_info(["framework", META_KEY]):
            return None
        self._compiled = self._core.compile_model(self._network, "CPU", self._config)
        return str(self._network.get_rt_info(["framework", META_KEY]).astype(str))

    def _infer(self, x: np.ndarray) -> np.ndarray:
        out = self._compiled.create_infer_request().infer({0: x})[self._compiled.output(0)]
        return np.array(out, dtype=np.float32)


def import_openvino() -> ModuleType:
    """``openvino``, imported without its usage telemetry.

    Importing ``openvino`` starts ``openvino_telemetry``, which phones home and does it by
    forking a process from a thread: in a process that also runs gRPC (Beam) that fork aborted
    or crashed it (seen in the test suite). OpenVINO falls back to its own no-op stub when the
    package cannot be imported, so the import is blocked (a ``None`` entry in ``sys.modules``)
    unless something imported it first.
    """
    sys.modules.setdefault("openvino_telemetry", None)
    import openvino

    return openvino


_CORE_LOCK = threading.Lock()
_CORE: list[Any] = []


def openvino_core() -> Any:
    """The process's one OpenVINO ``Core``, its CPU plugin loaded (OpenVINO's Core is
    thread-safe).

    Loading the CPU plugin points the loading thread's signal stack (``sigaltstack``) at memory
    that the Core frees when it goes, on whatever thread it goes: a Core freed elsewhere left the
    main thread's signal stack dangling, and the next signal handled there (a DataLoader's
    SIGCHLD) killed the process with SIGSEGV (seen in the test suite). So the Core is created and
    its plugin loaded on a short-lived thread, and kept for the process's life.
    """

    with _CORE_LOCK:
        if not _CORE:
            with ThreadPoolExecutor(1) as pool:
                _CORE.append(pool.submit(_load_core).result())
        return _CORE[0]


def _load_core() -> Any:
    core = import_openvino().Core()
    core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return core


@functools.cache  # asks OpenVINO's CPU plugin once a process
def openvino_bf16_available() -> bool:
    """Whether OpenVINO is installed and this CPU computes bfloat16 natively (its own report)."""
    if importlib.util.find_spec("openvino") is None:
        return False
    return "BF16" in openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def export_path(checkpoint: str | os.PathLike[str], runtime: type[OnnxModel] = OnnxModel) -> Path:
    """Where the export ``runtime`` runs lives beside a checkpoint: ``<stem>.onnx`` (the int8
    one, :class:`OnnxInt8Model`'s: ``<stem>.int8.onnx``)."""
    return Path(checkpoint).with_suffix(runtime.suffix)


def open_beside(
    checkpoint: str | os.PathLike[str], checkpoint_sha256: str, runtime: type[OnnxModel] = OnnxModel
) -> OnnxModel | None:
    """Open the ONNX export shipped beside a checkpoint, if there is one for these weights.

    Args:
        checkpoint: the local ``.safetensors`` file.
        checkpoint_sha256: the sha256 the checkpoint has (already checked by the caller, or
            about to be): an export made from other weights is not used.
        runtime: :class:`OnnxModel` (ONNX Runtime, fp32), :class:`OpenVinoBf16Model`, or
            :class:`OnnxInt8Model` (the int8 export).

    Returns:
        The model, or None when no export is there or it was made from another checkpoint
        (warned about: the caller then converts the checkpoint itself).

    Raises:
        CheckpointError: the export is there but damaged (its sha256 sidecar disagrees) or has
            no sidecar.
    """
    path = export_path(checkpoint, runtime)
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
    model = runtime(path)
    if model.checkpoint_sha256 != checkpoint_sha256.lower():
        warnings.warn(
            f"{path.name} was exported from another checkpoint than {Path(checkpoint).name} "
            "(the sha256 it records differs); it is not used. Export it again with "
            "`ob-models export-onnx`",
            stacklevel=2,
        )
        return None
    return model
