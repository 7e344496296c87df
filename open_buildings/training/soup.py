"""A uniform model soup: the mean of the weights of several fine-tunes of one model, calibrated.

Fine-tunes that start from the same checkpoint stay in one basin of the loss, so the mean of
their weights is itself a good model, usually better and always steadier than a single
fine-tune, at one model's inference cost (Wortsman et al. 2022, "Model soups"). Averaging
models trained from different random starts does not work: their units are not aligned.

PyTorch has ``torch.optim.swa_utils.AveragedModel`` for averages along one run (what ``ema``
uses); it has nothing that averages saved checkpoints and checks that they are one network, so
:func:`average_weights` does that. The soup is then calibrated like the end of an ``ob-train``
run: operating points on the config's validation areas, input ranges on its training areas.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from open_buildings.errors import ConfigError
from open_buildings.geo.grid import GridSpec
from open_buildings.models.base import BuildingModel
from open_buildings.models.checkpoint import load_checkpoint, save_checkpoint
from open_buildings.models.checkpoint_meta import read_sidecar
from open_buildings.training.batches import held_out_tiles, load_areas
from open_buildings.training.calibrate import input_ranges, operating_points
from open_buildings.training.config import TrainConfig
from open_buildings.training.validate import metrics, score_scenes


def average_weights(models: Sequence[BuildingModel], names: Sequence[str]) -> dict[str, Any]:
    """The element-wise mean of the models' floating-point tensors (integers from the first).

    Args:
        models: two or more models of one network (same registry name, config and tensors).
        names: what each model is, for messages.

    Raises:
        ConfigError: fewer than two models, or models that are not the same network.
    """
    if len(models) < 2:
        raise ConfigError("a soup needs at least two checkpoints")
    first = models[0]
    for model, name in zip(models[1:], names[1:]):
        # one registry name and config build one network: the same tensors, the same shapes
        if (model.name, model.config) != (first.name, first.config):
            raise ConfigError(
                f"{name} is a {model.name} {model.config}, {names[0]} a {first.name} "
                f"{first.config}: a soup averages fine-tunes of one model"
            )
    states = [m.state_dict() for m in models]
    averaged = {}
    for key, value in states[0].items():
        if value.is_floating_point():
            total = sum(state[key].to(torch.float64) for state in states)
            averaged[key] = (total / len(states)).to(value.dtype)
        else:  # BatchNorm's num_batches_tracked: a count, not a weight
            averaged[key] = value.clone()
    return averaged


def make_soup(
    cfg: TrainConfig, members: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]
) -> dict[str, Any]:
    """Average ``members`` into ``out`` and calibrate it on ``cfg``'s validation areas.

    Args:
        cfg: the training config the members were fine-tuned with: its ``val`` areas give the
            operating points (as at the end of ``ob-train``), its ``train`` areas the input
            ranges.
        members: the fine-tuned checkpoints (each with its ``.sha256`` sidecar).
        out: the soup's ``.safetensors`` path (its folder must exist).

    Returns:
        ``{"weights", "sha256", "members": [{"path", "sha256"}], "val", "operating_points"}``,
        where ``val`` holds the soup's validation metrics (``validate.metrics``).

    Raises:
        ConfigError: no validation or training areas, or members that are not one network.
    """
    if not cfg.val or not cfg.train:
        raise ConfigError(
            "a soup is calibrated like a training run: its config needs 'val' areas (the "
            "operating points) and 'train' areas (the input ranges)"
        )
    paths = [Path(m) for m in members]
    models = [load_checkpoint(p) for p in paths]
    soup = models[0]
    soup.load_state_dict(average_weights(models, [str(p) for p in paths]))
    soup.eval()
    spec = GridSpec(level=cfg.grid_level)
    val = load_areas(cfg, cfg.val, labelled=True)
    scored = score_scenes(soup, val, spec=spec)
    points = operating_points(
        soup, val, measured_on=", ".join(a.name for a in cfg.val), spec=spec, scored=scored
    )
    train = load_areas(cfg, cfg.train, labelled=False, held_out=held_out_tiles(cfg.val, val))
    ranges = input_ranges(soup, train, measured_on=", ".join(a.name for a in cfg.train))
    sha = save_checkpoint(soup, out, operating_points=points, input_ranges=ranges)
    return {
        "weights": str(out),
        "sha256": sha,
        "members": [{"path": str(p), "sha256": read_sidecar(p)} for p in paths],  # as loaded
        "val": metrics(scored),
        "operating_points": points,
    }
