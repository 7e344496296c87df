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
from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812

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
    h, w = x.shape[-2:]
    pad_h, pad_w = height - h, width - w
    if pad_h < 0 or pad_w < 0:
        raise ValueError(f"cannot pad a {h}x{w} image to {height}x{width}")
    if not (pad_h or pad_w):
        return x, (0, 0)
    top, left = (pad_h // 2, pad_w // 2) if centre else (0, 0)
    pads = (left, pad_w - left, top, pad_h - top)
    if mode == "constant":
        return F.pad(x, pads, mode="constant", value=0.0), (top, left)
    if mode == "reflect" and max(pads[0], pads[1]) < w and max(pads[2], pads[3]) < h:
        return F.pad(x, pads, mode="reflect"), (top, left)
    return F.pad(x, pads, mode="replicate"), (top, left)


def pad_to_multiple(
    x: torch.Tensor, multiple: int, *, mode: PadMode, centre: bool
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad ``(B, C, H, W)`` so both sides are multiples of ``multiple`` (see :func:`pad_to`)."""
    height, width = padded_shape(*x.shape[-2:], multiple)
    return pad_to(x, height, width, mode=mode, centre=centre)
