"""The PyTorch side of running a model: native bf16, and a loaded network made fast on a CPU.

Imported only where PyTorch runs the model (the light install has none): :func:`prepare_model`
converts a ``BuildingModel`` to ONNX Runtime when it can (``onnx_backend``), else keeps PyTorch
in ``channels_last``; :func:`native_bf16` says whether a device computes bfloat16 natively.
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import TYPE_CHECKING, Any

from open_buildings.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

BACKENDS = ("auto", "torch", "onnxruntime", "openvino-bf16", "onnxruntime-int8")


def torch_available() -> bool:
    """Return True when PyTorch is installed (the ``[train]`` extra; the light install has none)."""
    return importlib.util.find_spec("torch") is not None


def native_bf16(device: Any = "cpu") -> bool:
    """Return True when ``device`` computes bfloat16 natively.

    Args:
        device: ``"cpu"`` or ``"cuda"`` (or a ``torch.device``).

    Returns:
        For a CPU: whether oneDNN has bf16 kernels here (AVX512-BF16 or AMX). For a GPU: whether
        torch reports bf16 support (Ampere and later). False without PyTorch.
    """
    if not torch_available():
        return False
    import torch

    kind = torch.device(device).type
    if kind == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def prepare_model(
    model: nn.Module,
    device: Any = "cpu",
    *,
    bf16: bool = False,
    backend: str = "auto",
    cache_key: str | None = None,
) -> tuple[Any, str]:
    """Make a loaded model fast for inference on ``device`` without changing what it computes.

    Args:
        model: a ``BuildingModel`` in eval mode, already on ``device``.
        device: where it runs.
        bf16: whether it will run under bfloat16 autocast (ONNX Runtime is then not used).
        backend: ``"auto"`` (ONNX Runtime on a CPU when installed and the network exports,
            else PyTorch), ``"torch"``, or ``"onnxruntime"`` (an error if it cannot be used).
        cache_key: the conversion's cache key (:func:`checkpoint_key`); None hashes the weights.

    Returns:
        The model (an :class:`~.onnx_model.OnnxModel` for ONNX Runtime) and the backend it now
        runs on: ``"onnxruntime"``, ``"torch"`` or ``"torch-channels-last"``.

    Raises:
        ConfigError: for an unknown backend, or ``"onnxruntime"`` where it cannot run
            (not installed, a GPU, bf16, or a network that does not convert).
    """
    import torch
    from torch import nn

    from open_buildings.pipelines import onnx_backend

    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    on_cpu = torch.device(device).type == "cpu"
    if backend == "onnxruntime" and not (
        on_cpu and not bf16 and onnx_backend.conversion_available()
    ):
        raise ConfigError(
            "backend 'onnxruntime' runs fp32 on a CPU and needs the onnxruntime and onnx "
            "packages (pip install onnxruntime onnx); use backend 'auto' or 'torch' here"
        )
    if backend != "torch" and on_cpu and not bf16 and onnx_backend.conversion_available():
        try:
            return onnx_backend.to_onnxruntime(model, cache_key), "onnxruntime"
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
