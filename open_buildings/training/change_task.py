"""``ob-train`` for the two-date change models: the config's limits, each step's pairs, and
validation on fixed held-out pairs.

Validation pairs come from :func:`.change_pairs.validation_pairs` (whole validation tiles, never
trained on). The record keeps ``f1`` (pixel F1 of the change head at 0.5, the figure runs are
compared by), the object F1 of changed buildings and the pixel F1 of each date's building head.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from open_buildings.errors import ConfigError
from open_buildings.evaluation.change_scores import ChangeCounts, count_change, prf
from open_buildings.models.base import BuildingModel
from open_buildings.models.registry import get_entry
from open_buildings.training import chips as chipping
from open_buildings.training.batches import Batch, HeldOut
from open_buildings.training.change_pairs import (
    change_batch,
    load_dated,
    recolour,
    validation_pairs,
)
from open_buildings.training.scenes import Scene

Pair = tuple[np.ndarray, np.ndarray, np.ndarray]


def is_change_model(name: str) -> bool:
    """Whether the registered model ``name`` is a two-date change model (has a change head)."""
    return "change" in get_entry(name).output_channels


def check_change_config(cfg: Any, world: int = 1) -> None:
    """Refuse what a change run cannot do (``cfg``: a ``TrainConfig``; ``world``: its ranks).

    Raises:
        ConfigError: mixup, self-training, keep_best/patience (which rank by building F1),
            shards or several ranks (its pairs are drawn from scenes in one process).
    """
    refused = {
        "shards": cfg.shards,
        "--nproc above 1": world > 1,
        "mixup.enabled": cfg.mixup.enabled,
        "self_training.enabled": cfg.self_training.enabled,
        "stopping.keep_best": cfg.stopping.keep_best,
        "stopping.patience": cfg.stopping.patience,
    }
    for key, value in refused.items():
        if value:
            raise ConfigError(
                f"{cfg.model} is a change model, trained on pairs made from single-date labels; "
                f"{key} applies to building models only: remove it from the config"
            )


def pair_batches(pool: chipping.ScenePool, cfg: Any, held: HeldOut) -> Callable[[int, Any], Batch]:
    """Each step's batch of pairs, ``draw(step, transform)``; the config's dated areas are read
    here (validation tiles held out)."""
    colour, dated = recolour(), load_dated(cfg, held)
    return lambda step, transform: change_batch(pool, cfg, step, transform, colour, dated)


def pair_scorer(val_scenes: Sequence[Scene], cfg: Any) -> Callable[[BuildingModel], dict]:
    """Score a model on the config's fixed validation pairs (none without validation scenes)."""
    pairs = (
        validation_pairs(chipping.ScenePool(val_scenes), cfg.chip.size, cfg.change.val_pairs)
        if val_scenes
        else []
    )
    return lambda model: score_pairs(model, pairs, bf16=cfg.bf16)


def change_logits(model: BuildingModel, images: np.ndarray, *, bf16: bool = False) -> np.ndarray:
    """Run a change model on float pairs ``(N, 6, H, W)`` in [0, 1]; logits ``(N, 3, H, W)``."""
    model.eval()
    device = next(model.parameters()).device
    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
        out = model(torch.from_numpy(np.ascontiguousarray(images)).to(device))
    return out.float().cpu().numpy()


def score_pairs(
    model: BuildingModel,
    pairs: Sequence[Pair],
    *,
    bf16: bool = False,
    batch: int = 8,
) -> dict[str, Any]:
    """Score ``model`` on ``(images, targets, weights)`` pairs; see the module docstring."""
    counts = ChangeCounts()
    building = np.zeros(3, dtype=np.int64)  # tp, predicted, true building pixels
    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        logits = change_logits(model, np.stack([p[0] for p in chunk]), bf16=bf16)
        for out, (_, target, weight) in zip(logits, chunk):
            seen = weight[2] > 0
            counts += count_change((out[2] > 0) & seen, (target[2] > 0.5) & seen)
            for k in (0, 1):
                pred, true = (out[k] > 0) & (weight[k] > 0), (target[k] > 0.5) & (weight[k] > 0)
                building += [int((pred & true).sum()), int(pred.sum()), int(true.sum())]
    scores = counts.scores()
    return {
        "f1": scores["pixel"]["f1"],
        "precision": scores["pixel"]["precision"],
        "recall": scores["pixel"]["recall"],
        "object_f1": scores["object_iou50"]["f1"],
        "building_f1": prf(*building)["f1"],
        "pairs": len(pairs),
    }
