"""The optimiser of a training run: AdamW over the trainable weights, and the learning-rate
schedule (linear warm-up, then cosine decay or constant)."""

from __future__ import annotations

import math

import torch

from open_buildings.errors import ConfigError
from open_buildings.models.base import BuildingModel
from open_buildings.training.config import TrainConfig


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 1% of ``lr`` at the last step (or ``lr`` throughout,
    with ``lr_schedule: constant``)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
    return cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def optimizer_factory(cfg: TrainConfig):
    """``factory(model)``: AdamW over the weights that train (not a frozen encoder's), the
    encoder's in a group of its own at ``encoder_lr_scale`` of the learning rate."""

    def factory(model: BuildingModel) -> torch.optim.Optimizer:
        if cfg.freeze_encoder:
            frozen_encoder(model).requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        groups: list[dict] = [{"params": params, "lr_scale": 1.0}]
        if cfg.encoder_lr_scale != 1.0 and not cfg.freeze_encoder:
            encoder = {id(p) for p in frozen_encoder(model).parameters()}
            slow = [p for p in params if id(p) in encoder]
            groups = [
                {"params": [p for p in params if id(p) not in encoder], "lr_scale": 1.0},
                {"params": slow, "lr_scale": cfg.encoder_lr_scale},
            ]
        for group in groups:
            group["lr"] = cfg.lr * group["lr_scale"]
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)

    return factory


def frozen_encoder(model: BuildingModel) -> torch.nn.Module:
    """The encoder that ``freeze_encoder`` keeps as it is (weights and BatchNorm statistics),
    and that ``encoder_lr_scale`` slows.

    Raises:
        ConfigError: the model has no separate encoder (``net.encoder``).
    """
    encoder = getattr(model.net, "encoder", None)
    if not isinstance(encoder, torch.nn.Module):
        raise ConfigError(
            f"{model.name} has no separate encoder to freeze or slow; drop freeze_encoder "
            "and encoder_lr_scale"
        )
    return encoder
