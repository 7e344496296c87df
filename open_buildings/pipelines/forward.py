"""The model's forward pass over tiles of any size, in numpy, for ONNX Runtime and PyTorch alike.

:func:`run_model` pads each tile by a rule that depends only on the tile, batches tiles of one
padded size, and runs an :class:`~.onnx_model.OnnxModel` directly or a PyTorch
``BuildingModel`` through a small adapter (imported only then, so the light install needs no
torch). Test-time augmentation averages the probabilities of the 8 flips and quarter turns.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
from scipy.special import expit, logit

from open_buildings.models.padding import pad_array, padded_shape
from open_buildings.pipelines.onnx_model import OnnxModel

#: Each tile is padded (bottom/right) to a multiple of this before the model sees it.
PAD_MULTIPLE = 64
Forward = Callable[[np.ndarray], np.ndarray]


def run_model(
    model: Any,
    images: Sequence[np.ndarray],
    *,
    device: Any = "cpu",
    bf16: bool = False,
    pad_multiple: int = PAD_MULTIPLE,
    tta: bool = False,
) -> list[np.ndarray]:
    """Run the model on tiles of possibly different sizes; return each tile's logits.

    Each tile is padded at its bottom and right (reflecting its own pixels) to a size that depends
    only on the tile: its height and width rounded up to ``pad_multiple`` (and to the model's size
    divisor). Tiles whose padded sizes agree run as one batch; the logits are cropped back to the
    tile. So a tile's result never depends on which tiles it was batched with, and a retried or
    resumed tile gives the same footprints.

    Args:
        model: an :class:`~.onnx_model.OnnxModel` or a ``BuildingModel`` (either takes floats in
            [0, 1] and returns logits).
        images: uint8 arrays of shape (3, H, W).
        device: where a PyTorch model is (``torch.device`` or ``"cpu"``/``"cuda"``).
        bf16: run a PyTorch model under bfloat16 autocast.
        pad_multiple: the padding granularity in pixels.
        tta: test-time augmentation: run the 8 flips and quarter turns of each padded tile,
            undo each on its output, and average the probabilities (8x the compute); the
            logits returned are those of the mean probability.

    Returns:
        float32 arrays of shape (C, H, W), one per image, in input order.
    """
    divisor = int(getattr(getattr(model, "input_spec", None), "divisor", 1))
    multiple = math.lcm(int(pad_multiple), max(1, divisor))
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        if image.ndim != 3 or image.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (bands, H, W), got {image.dtype} {image.shape}")
        groups.setdefault(padded_shape(*image.shape[1:], multiple), []).append(i)
    forward = _numpy_forward(model, device, bf16)
    out: list[np.ndarray | None] = [None] * len(images)
    for (height, width), members in sorted(groups.items()):
        batch = [
            pad_array(images[i], height, width, mode="reflect", centre=False)[0] for i in members
        ]
        x = np.stack(batch).astype(np.float32) / np.float32(255.0)
        logits = _averaged_over_d4(forward, x) if tta else forward(x)
        for k, i in enumerate(members):
            h, w = images[i].shape[1:]
            out[i] = np.ascontiguousarray(logits[k, :, :h, :w], dtype=np.float32)
    return out  # type: ignore[return-value]


def _numpy_forward(model: Any, device: Any, bf16: bool) -> Forward:
    """The model as a function from a float32 numpy batch to float32 numpy logits."""
    if isinstance(model, OnnxModel):
        return model
    import torch

    device = torch.device(device)

    def forward(x: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(np.ascontiguousarray(x)).to(device)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
        with torch.inference_mode(), autocast:
            return model(tensor).float().cpu().numpy()

    return forward


def _averaged_over_d4(forward: Forward, x: np.ndarray) -> np.ndarray:
    """Logits of the probabilities averaged over the 8 symmetries of the square (flips, turns)."""
    total = np.zeros((), dtype=np.float32)
    for flip in (False, True):
        for turns in range(4):
            y = x[..., ::-1] if flip else x
            y = forward(np.ascontiguousarray(np.rot90(y, turns, axes=(-2, -1))))
            y = np.rot90(y, -turns, axes=(-2, -1))
            total = total + expit(y[..., ::-1] if flip else y)
    mean = np.clip(total / 8, 1e-6, 1 - 1e-6)
    return logit(mean).astype(np.float32)
