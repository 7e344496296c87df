"""The model's forward pass over tiles of any size, in numpy, for ONNX Runtime and PyTorch alike.

:func:`run_model` pads each tile by a rule that depends only on the tile, batches tiles of one
padded size, and runs an :class:`~.onnx_model.OnnxModel` directly or a PyTorch
``BuildingModel`` through a small adapter (imported only then, so the light install needs no
torch). Test-time augmentation averages the probabilities of the 8 flips and quarter turns.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
from scipy.special import expit, logit

from open_buildings.models.padding import pad_array, padded_shape
from open_buildings.pipelines.onnx_model import OnnxModel

#: Each tile is padded (bottom/right) to a multiple of this before the model sees it.
PAD_MULTIPLE = 64
#: Pixels of context kept around a tile's imagery when the model window is cropped to it.
CONTEXT_PX = 64
#: The logit written where the model did not run (no imagery): far below any threshold.
NO_DATA_LOGIT = -30.0
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
    forward = _numpy_forward(model, device, bf16)
    out: list[np.ndarray | None] = [None] * len(images)
    for members, x in padded_batches(images, input_multiple(model, pad_multiple)):
        logits = _averaged_over_d4(forward, x) if tta else forward(x)
        for k, i in enumerate(members):
            h, w = images[i].shape[1:]
            out[i] = np.ascontiguousarray(logits[k, :, :h, :w], dtype=np.float32)
    return out  # type: ignore[return-value]


def input_multiple(model: Any, pad_multiple: int = PAD_MULTIPLE) -> int:
    """What tiles' heights and widths are rounded up to: pad_multiple and the model's divisor."""
    return math.lcm(int(pad_multiple), max(1, _divisor(model)))


def padded_batches(
    images: Sequence[np.ndarray], multiple: int
) -> Iterator[tuple[list[int], np.ndarray]]:
    """Group tiles by padded size: ``(indices, float32 (N, 3, H, W) batch in [0, 1])`` per size.

    Each tile is padded at its bottom and right, reflecting its own pixels, to its height and
    width rounded up to ``multiple`` (see :func:`run_model`).
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        if image.ndim != 3 or image.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (bands, H, W), got {image.dtype} {image.shape}")
        groups.setdefault(padded_shape(*image.shape[1:], multiple), []).append(i)
    for (height, width), members in sorted(groups.items()):
        batch = [
            pad_array(images[i], height, width, mode="reflect", centre=False)[0] for i in members
        ]
        yield members, np.stack(batch).astype(np.float32) / np.float32(255.0)


class NumpyForward:
    """A loaded model as a numpy function (float32 batch in, float32 logits out) and its divisor.

    This is what a model shared across processes (``runtime.share_model_across_processes``)
    serves: Beam keeps it in one process and hands the others a proxy that can only call its
    methods and pass picklable values, so it takes and returns numpy arrays and says its size
    divisor through a method. :func:`run_model` accepts it, or the proxy, as its ``model``.
    """

    def __init__(self, model: Any, device: Any = "cpu", bf16: bool = False) -> None:
        self._forward = _numpy_forward(model, device, bf16)
        self._divisor = _divisor(model)
        self._model, self._device, self._bf16 = model, device, bf16

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The model's logits for a float32 ``(N, 3, H, W)`` batch in [0, 1]."""
        return self._forward(x)

    def size_divisor(self) -> int:
        """The model's input size divisor (its height and width must be multiples of it)."""
        return self._divisor

    def run_decoded(self, tiles: list[tuple[np.ndarray, np.ndarray]], pad_multiple: int) -> list:
        """``device_decode.run_decoded`` on this model: tiles in, decoded tiles out."""
        from open_buildings.pipelines.device_decode import run_decoded

        return run_decoded(
            self._model, tiles, device=self._device, bf16=self._bf16, pad_multiple=pad_multiple
        )


def _shared(model: Any) -> bool:
    return hasattr(model, "size_divisor")  # a NumpyForward, or Beam's method-only proxy of one


def _divisor(model: Any) -> int:
    if _shared(model):
        return int(model.size_divisor())
    return int(getattr(getattr(model, "input_spec", None), "divisor", 1))


def _numpy_forward(model: Any, device: Any, bf16: bool) -> Forward:
    """The model as a function from a float32 numpy batch to float32 numpy logits."""
    if isinstance(model, OnnxModel) or _shared(model):  # numpy in, numpy out already
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


def valid_window(valid: np.ndarray, context: int = CONTEXT_PX) -> tuple[int, int, int, int]:
    """``(row0, row1, col0, col1)``: the box of a tile's imagery plus ``context`` pixels.

    The model then runs on that window only, so a tile that imagery covers in part costs what
    its imagery does (the whole tile when it is covered edge to edge). The window's corners lie
    on multiples of ``PAD_MULTIPLE`` from the tile's origin (or on its far edges): a network
    that downsamples 32x is not shift-invariant, and this keeps every pixel of the window at the
    same phase as in a whole-tile run.

    Args:
        valid: bool (H, W), True where there is imagery (at least one pixel).
        context: pixels of the tile kept around the imagery's box, clipped to the tile.
    """
    rows, cols = np.flatnonzero(valid.any(axis=1)), np.flatnonzero(valid.any(axis=0))
    height, width = valid.shape
    step = PAD_MULTIPLE

    def span(first: int, last: int, size: int) -> tuple[int, int]:
        start = max(0, first - context) // step * step
        stop = -(-(last + 1 + context) // step) * step
        return start, min(size, stop)

    return (*span(int(rows[0]), int(rows[-1]), height), *span(int(cols[0]), int(cols[-1]), width))


def imagery_crops(
    tiles: Sequence[tuple[np.ndarray, np.ndarray]],
) -> tuple[list[tuple[int, int, int, int]], list[np.ndarray]]:
    """Each tile's :func:`valid_window` and its pixels in that window.

    Args:
        tiles: ``(rgb, valid)`` per tile; a tile needs at least one valid pixel.
    """
    windows = [valid_window(valid) for _, valid in tiles]
    crops = [
        rgb[:, r0:r1, c0:c1] for (rgb, _), (r0, r1, c0, c1) in zip(tiles, windows, strict=True)
    ]
    return windows, crops


def run_on_imagery(
    model: Any, tiles: Sequence[tuple[np.ndarray, np.ndarray]], **kwargs: Any
) -> list[np.ndarray]:
    """:func:`run_model` on each tile's :func:`valid_window`; logits of the whole tile back.

    Args:
        model: as for :func:`run_model`.
        tiles: ``(rgb, valid)`` per tile; a tile needs at least one valid pixel.
        **kwargs: passed to :func:`run_model`.

    Returns:
        float32 ``(C, H, W)`` per tile: the model's logits in the window, ``NO_DATA_LOGIT``
        outside it.
    """
    windows, crops = imagery_crops(tiles)
    logits = run_model(model, crops, **kwargs)
    out = []
    for (rgb, _), (r0, r1, c0, c1), part in zip(tiles, windows, logits, strict=True):
        if part.shape[1:] == rgb.shape[1:]:
            out.append(part)
            continue
        full = np.full((part.shape[0], *rgb.shape[1:]), NO_DATA_LOGIT, dtype=np.float32)
        full[:, r0:r1, c0:c1] = part
        out.append(full)
    return out
