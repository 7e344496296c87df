"""The model and the decode together on the model's device, for GPU workers.

With ``runtime.decode`` ``"device"`` (``"auto"`` on a GPU), :func:`run_decoded` keeps each
batch's logits where the PyTorch model wrote them, decodes them there
(:func:`.decode_torch.decode_on_device`) and hands the host a :class:`DecodedTile`: instance
labels, confidences and the building share, instead of two float channels per pixel for the CPU
to decode. ``postprocess.footprints_for_tile`` and ``domain.tile_stats`` take either form.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np

from open_buildings.pipelines.config import InferConfig, RuntimeConfig
from open_buildings.pipelines.forward import (
    NO_DATA_LOGIT,
    PAD_MULTIPLE,
    imagery_crops,
    input_multiple,
    padded_batches,
)


@dataclass(frozen=True)
class DecodedTile:
    """One tile's instances, decoded where the model ran.

    Attributes:
        labels: ``(H, W)`` instance ids on the tile's grid, 0 = background (``uint16`` or
            ``int32``).
        confidence: ``float32 (N + 1,)``, each instance's mean building probability by id.
        building_fraction: the share of the tile's imagery pixels whose building logit is > 0.
    """

    labels: np.ndarray
    confidence: np.ndarray
    building_fraction: float


def decodes_on_device(runtime: RuntimeConfig) -> bool:
    """Whether jobs with these settings decode where the model runs.

    ``"auto"`` does on a GPU without test-time augmentation (whose averaging is in numpy);
    ``"device"`` always does, ``"host"`` never.
    """
    if runtime.decode == "auto":
        return runtime.device == "cuda" and not runtime.tta
    return runtime.decode == "device"


def job_runtime(config: InferConfig) -> RuntimeConfig:
    """The job's runtime settings with ``decode`` resolved to ``"host"`` or ``"device"``.

    ``"auto"`` decodes on the host when the job writes probability rasters (they need the
    logits there), else as :func:`decodes_on_device` says.
    """
    runtime = config.runtime
    device = decodes_on_device(runtime) and not (
        runtime.decode == "auto" and config.write_probabilities
    )
    return runtime.model_copy(update={"decode": "device" if device else "host"})


def run_decoded(
    model: Any,
    tiles: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    device: Any = "cpu",
    bf16: bool = False,
    pad_multiple: int = PAD_MULTIPLE,
) -> list[DecodedTile]:
    """``forward.run_on_imagery`` then the decode, both on the PyTorch model's device.

    The model sees exactly what ``run_on_imagery`` gives it (the same windows, padding and
    batches), so the logits are the same; only the decode differs (see ``decode_torch``).

    Args:
        model: a ``BuildingModel`` on ``device``.
        tiles: ``(rgb, valid)`` per tile; a tile needs at least one valid pixel.
        device: the model's device.
        bf16: run the model under bfloat16 autocast.
        pad_multiple: the padding granularity in pixels.

    Returns:
        One :class:`DecodedTile` per tile, in input order.
    """
    import torch

    from open_buildings.models.decode_torch import decode_on_device

    device = torch.device(device)
    windows, crops = imagery_crops(tiles)
    full: list[Any] = [None] * len(tiles)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with torch.inference_mode():
        for members, x in padded_batches(crops, input_multiple(model, pad_multiple)):
            with autocast:
                logits = model(torch.from_numpy(x).to(device)).float()
            for k, i in enumerate(members):
                rgb = tiles[i][0]
                (r0, r1, c0, c1), (h, w) = windows[i], crops[i].shape[1:]
                tile = torch.full((logits.shape[1], *rgb.shape[1:]), NO_DATA_LOGIT, device=device)
                tile[:, r0:r1, c0:c1] = logits[k, :, :h, :w]
                full[i] = tile
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, tile in enumerate(full):
            by_shape.setdefault(tuple(tile.shape), []).append(i)
        out: list[DecodedTile | None] = [None] * len(tiles)
        for members in by_shape.values():
            valid = torch.from_numpy(np.stack([tiles[i][1] for i in members])).to(device)
            decoded = decode_on_device(torch.stack([full[i] for i in members]), valid)
            for i, (labels, confidence, share) in zip(members, decoded, strict=True):
                out[i] = DecodedTile(labels, confidence, share)
    return out  # type: ignore[return-value]
