"""``ob-search``'s proxy task: a candidate decoder trained briefly on a frozen encoder's features.

Every candidate is the same U-Net with another decoder cell, on the encoder of a trained
building model (``encoder_from``, the shipped default by default), which stays frozen. So the
encoder's features of a fixed set of training chips and of the validation scenes are computed
once (:func:`prepare`) and each candidate only trains and runs its decoder and heads
(:func:`train_candidate`): a fixed number of steps over the cached chips, then the validation
scenes scored as ``ob-train`` validates (``validate.score_scenes``: ``ob-infer``'s decoding and
tile ownership, ``ob-eval``'s AP50 and F1). The proxy ranks decoders; the full retraining of the
chosen cells (``ob-train``) trains everything.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from open_buildings.geo.grid import GridSpec
from open_buildings.models.base import BuildingModel
from open_buildings.models.losses import segmentation_loss
from open_buildings.models.padding import pad_array, padded_shape
from open_buildings.models.registry import build_model
from open_buildings.pipelines.forward import PAD_MULTIPLE
from open_buildings.training import chips as chipping
from open_buildings.training.batches import held_out_tiles, labelled_batch, load_areas
from open_buildings.training.config import TrainConfig
from open_buildings.training.scenes import Scene
from open_buildings.training.search_space import Cell
from open_buildings.training.validate import metrics, score_scenes


@dataclass
class ProxyData:
    """The cached inputs of every candidate's proxy run."""

    model: str
    encoder_state: dict[str, torch.Tensor]
    chip_features: list[list[torch.Tensor]]
    targets: list[torch.Tensor]
    weights: list[torch.Tensor]
    val_scenes: list[Scene]
    val_features: list[list[torch.Tensor]]
    val_crops: list[tuple[int, int, int, int]]
    spec: GridSpec


def prepare(
    train_cfg: TrainConfig,
    encoder_model: BuildingModel,
    *,
    chip: int,
    batches: int,
    batch_size: int,
) -> ProxyData:
    """Read the areas, cut ``batches`` fixed batches of chips and cache the frozen encoder's
    features of them and of the validation scenes."""
    spec = GridSpec(level=train_cfg.grid_level)
    cfg = train_cfg.model_copy(
        update={"chip": train_cfg.chip.model_copy(update={"size": chip}), "batch_size": batch_size}
    )
    val_scenes = load_areas(cfg, cfg.val, labelled=True) if cfg.val else []
    held = held_out_tiles(cfg.val, val_scenes)
    pool = chipping.ScenePool(load_areas(cfg, cfg.train, labelled=True, held_out=held))
    augment = chipping.augmenter()
    encoder_model.eval()
    encoder = encoder_model.net.encoder
    chip_features, targets, weights = [], [], []
    with torch.no_grad():  # not inference_mode: the decoders' backward passes read these
        for step in range(batches):
            batch = labelled_batch(pool, cfg, step, augment)
            x, _ = encoder_model.prepare(batch.images)
            chip_features.append([f.clone() for f in encoder(x)])
            targets.append(batch.targets)
            weights.append(batch.weights)
        val_features, crops = [], []
        for scene in val_scenes:
            features, crop = _encode_scene(encoder_model, scene.rgb)
            val_features.append(features)
            crops.append(crop)
    state = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    return ProxyData(
        encoder_model.name,
        state,
        chip_features,
        targets,
        weights,
        val_scenes,
        val_features,
        crops,
        spec,
    )


def _encode_scene(
    model: BuildingModel, rgb: np.ndarray
) -> tuple[list[torch.Tensor], tuple[int, int, int, int]]:
    """The encoder's features of one scene, padded as ``pipelines.forward.run_model`` pads it,
    and where its logits lie in the padded output (top, left, height, width)."""
    height, width = rgb.shape[1:]
    multiple = math.lcm(PAD_MULTIPLE, model.input_spec.divisor)
    padded, _ = pad_array(rgb, *padded_shape(height, width, multiple), mode="reflect", centre=False)
    x = torch.from_numpy(padded[None].astype(np.float32) / np.float32(255.0))
    x, (top, left) = model.prepare(x)
    return [f.clone() for f in model.net.encoder(x)], (top, left, height, width)


def candidate_model(
    name: str, cell: Cell | None, encoder_state: dict[str, torch.Tensor]
) -> BuildingModel:
    """The U-Net ``name`` with ``cell`` as its decoder blocks (None: smp's own decoder, the
    reference), on the frozen encoder's weights."""
    overrides = {} if cell is None else {"decoder_cell": [list(b) for b in cell]}
    model = build_model(name, **overrides)
    model.net.encoder.load_state_dict(encoder_state)
    model.net.encoder.requires_grad_(False)
    return model


def _decode(model: BuildingModel, features: list[torch.Tensor]) -> torch.Tensor:
    return model.net.segmentation_head(model.net.decoder(features))


def train_candidate(
    data: ProxyData, cell: Cell | None, *, steps: int, lr: float, seed: int
) -> tuple[BuildingModel, dict[str, Any]]:
    """Train ``cell``'s decoder (None: the plain U-Net decoder) for ``steps`` steps over the
    cached chips; score it.

    Returns:
        The trained model (eval mode) and ``{"ap50", "ap", "best_f1", "f1", "train_seconds",
        "params"}``.
    """
    torch.manual_seed(seed)
    began = time.perf_counter()
    model = candidate_model(data.model, cell, data.encoder_state)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=1e-4)
    model.train()
    model.net.encoder.eval()
    for step in range(steps):
        i = step % len(data.chip_features)
        for group in optimizer.param_groups:  # cosine decay: a short run settles
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        logits = _decode(model, data.chip_features[i])
        loss = segmentation_loss(logits, data.targets[i], data.weights[i])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.inference_mode():
        logits = []
        for features, (top, left, height, width) in zip(data.val_features, data.val_crops):
            out = _decode(model, features)[0, :, top : top + height, left : left + width]
            logits.append(out.float().numpy())
    scores = metrics(score_scenes(model, data.val_scenes, spec=data.spec, logits=logits))
    return model, {
        "ap50": scores["ap50"],
        "ap": scores["ap"],
        "best_f1": scores["best_f1"] or 0.0,
        "f1": scores["f1"],
        "train_seconds": time.perf_counter() - began,
        "params": sum(p.numel() for p in model.parameters()),
    }
