"""Padding an image batch to a size a network accepts: the one helper every model path uses.

Two choices make a policy, and each caller states both:

- ``centre``: pad evenly on all sides (the model wrapper, so the border a convolution sees is
  symmetric), or only at the bottom and right (the pipeline and the ViT/OWL-ViT patch grids, so
  pixel ``(0, 0)`` stays at the origin of the tile's grid and cropping back is ``[:h, :w]``).
- ``mode``: ``"reflect"`` (mirror the image; where a side is too short to mirror, replicate
  instead, because torch's reflect needs the pad to be shorter than the side), ``"replicate"``,
  or ``"constant"`` (zeros).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

PadMode = Literal["reflect", "replicate", "constant"]


def padded_shape(height: int, width: int, multiple: int) -> tuple[int, int]:
    """Return ``(height, width)`` rounded up to multiples of ``multiple``."""
    return (math.ceil(height / multiple) * multiple, math.ceil(width / multiple) * multiple)


def pad_to(
    x: torch.Tensor, height: int, width: int, *, mode: PadMode, centre: bool
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad ``(B, C, H, W)`` to ``(B, C, height, width)``.

    Args:
        x: the batch; its sides must not exceed ``height`` and ``width``.
        height: the padded height.
        width: the padded width.
        mode: how the new pixels are filled (see the module's docstring).
        centre: pad evenly on all sides instead of only at the bottom and right.

    Returns:
        The padded batch and ``(top, left)``: where the original image starts in it.
    """
    import torch.nn.functional as F  # noqa: N812 - torch only where a torch batch is padded

    pads, fill = _plan(x.shape[-2:], height, width, mode=mode, centre=centre)
    if pads is None:
        return x, (0, 0)
    (top, bottom), (left, right) = pads
    if fill == "constant":
        return F.pad(x, (left, right, top, bottom), mode="constant", value=0.0), (top, left)
    return F.pad(x, (left, right, top, bottom), mode=fill), (top, left)


def pad_array(
    x: np.ndarray, height: int, width: int, *, mode: PadMode, centre: bool
) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`pad_to` for a numpy ``(..., H, W)`` array: the same pixels, without torch.

    numpy's ``reflect`` and ``edge`` are torch's ``reflect`` and ``replicate``.
    """
    pads, fill = _plan(x.shape[-2:], height, width, mode=mode, centre=centre)
    if pads is None:
        return x, (0, 0)
    widths = [(0, 0)] * (x.ndim - 2) + list(pads)
    numpy_mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}[fill]
    return np.pad(x, widths, mode=numpy_mode), (pads[0][0], pads[1][0])


def _plan(
    shape: tuple[int, ...], height: int, width: int, *, mode: PadMode, centre: bool
) -> tuple[tuple[tuple[int, int], tuple[int, int]] | None, str]:
    """The ``((top, bottom), (left, right))`` pads and the fill that pads a side to the size."""
    h, w = int(shape[0]), int(shape[1])
    pad_h, pad_w = height - h, width - w
    if pad_h < 0 or pad_w < 0:
        raise ValueError(f"cannot pad a {h}x{w} image to {height}x{width}")
    if not (pad_h or pad_w):
        return None, mode
    top, left = (pad_h // 2, pad_w // 2) if centre else (0, 0)
    pads = ((top, pad_h - top), (left, pad_w - left))
    if mode == "reflect" and (max(pads[0]) >= h or max(pads[1]) >= w):
        return pads, "replicate"
    return pads, mode


def pad_to_multiple(
    x: torch.Tensor, multiple: int, *, mode: PadMode, centre: bool
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad ``(B, C, H, W)`` so both sides are multiples of ``multiple`` (see :func:`pad_to`)."""
    height, width = padded_shape(*x.shape[-2:], multiple)
    return pad_to(x, height, width, mode=mode, centre=centre)
