"""Training data: each area's scenes (validation tiles held out), the teacher's soft targets,
and every step's batches.

Everything random in a batch (which chips, their augmentation) is derived from
``(seed, step, index)``, so a resumed run draws exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from open_buildings.errors import ConfigError
from open_buildings.geo import imagery
from open_buildings.geo.grid import GridSpec
from open_buildings.models import heads
from open_buildings.pipelines.probabilities import probability_path, read_probabilities
from open_buildings.training import chips as chipping
from open_buildings.training.chip_cut import window
from open_buildings.training.config import AreaConfig, TrainConfig, UnlabelledAreaConfig
from open_buildings.training.distill import soft_targets
from open_buildings.training.scenes import Scene, load_scenes, read_labels


@dataclass
class Batch:
    """One step's tensors: images in [0, 1], targets, per-pixel weights."""

    images: torch.Tensor
    targets: torch.Tensor
    weights: torch.Tensor


#: Imagery (its resolved path) -> the grid tiles of it that validation uses.
HeldOut = dict[str, set[str]]


def held_out_tiles(areas: list[AreaConfig], scenes: list[Scene]) -> HeldOut:
    """Return the tiles that the validation ``scenes`` (read from ``areas``) use, by imagery."""
    held: HeldOut = {}
    for area in areas:
        tiles = {s.tile_id for s in scenes if s.area == area.name}
        held.setdefault(os.path.realpath(area.imagery), set()).update(tiles)
    return held


def load_areas(
    cfg: TrainConfig, areas: list[AreaConfig], *, labelled: bool, held_out: HeldOut | None = None
) -> list[Scene]:
    """Read the scenes of each area on the config's tile grid.

    Args:
        cfg: the run's config (grid level, chip size).
        areas: the areas to read.
        labelled: read each area's labels (training and validation) or not (self-training).
        held_out: validation tiles (:func:`held_out_tiles`): skipped in areas of the same imagery,
            and blanked in their neighbours' margins.

    Raises:
        ConfigError: if an area yields no scene with imagery.
    """
    spec = GridSpec(level=cfg.grid_level)
    scenes: list[Scene] = []
    for area in areas:
        held = (held_out or {}).get(os.path.realpath(area.imagery), set())
        source = imagery.open_imagery(area.imagery, bands=area.bands, scale=area.scale)
        labels = read_labels(area.labels) if labelled and area.labels else None
        if labelled and labels is None:
            raise ConfigError(f"area {area.name!r} is used for training but has no 'labels'")
        found = load_scenes(
            area.name,
            source,
            labels,
            spec,
            min_valid_px=int(cfg.chip.size**2 * cfg.chip.min_valid),
            only=area.tiles,
            held_out=held,
        )
        if not found:
            raise ConfigError(
                f"area {area.name!r}: no grid tile has imagery"
                + (f" once the validation tiles {sorted(held)} are held out" if held else "")
                + "; check 'imagery'"
                + (" and 'tiles'" if area.tiles else "")
            )
        scenes.extend(found)
    return scenes


def with_teacher(
    cfg: TrainConfig, areas: list[UnlabelledAreaConfig], held: HeldOut
) -> tuple[chipping.ScenePool, list[np.ndarray]]:
    """Read the unlabelled scenes and the teacher's soft targets (at ``T``) for each.

    Pixels without a teacher probability get no loss: they are marked as having no imagery.
    """
    scenes, targets = [], []
    temperature = cfg.self_training.temperature
    for area in areas:
        for scene in load_areas(cfg, [area], labelled=False, held_out=held):
            path = probability_path(area.probabilities, scene.tile_id)
            probs, has = read_probabilities(path, scene.grid)
            scene.valid = scene.valid & has
            p = np.clip(probs, 1e-3, 1 - 1e-3)
            logits = torch.from_numpy(np.log(p) - np.log1p(-p))
            targets.append(soft_targets(logits, temperature).numpy())
            scenes.append(scene)
    return chipping.ScenePool(scenes), targets


def chip_spec(cfg: TrainConfig) -> chipping.ChipSpec:
    """How the config's training chips are cut."""
    return chipping.ChipSpec(cfg.chip.size, cfg.chip.empty_share, cfg.chip.min_valid)


def labelled_batch(
    pool: chipping.ScenePool, cfg: TrainConfig, step: int, transform, rank: int = 0
) -> Batch:
    """Return the step's labelled batch with targets from :func:`heads.make_targets`.

    Rank ``r`` of a data-parallel run draws chips ``r * B .. (r + 1) * B - 1`` of the step, so
    two ranks at batch B draw exactly the chips one rank draws at 2B.
    """
    spec = chip_spec(cfg)
    images, targets, weights = [], [], []
    first = rank * cfg.batch_size
    for i in range(first, first + cfg.batch_size):
        rng = chipping.rng_for(cfg.seed, step, 0, i)
        with_buildings = bool(rng.random() >= cfg.chip.empty_share)
        chip = pool.sample(spec, rng, with_buildings=with_buildings)
        chip, _ = chipping.augment(transform, chip, int(rng.integers(2**31 - 1)))
        made = heads.make_targets(chip.instances)
        images.append(chip.rgb.astype(np.float32) / 255.0)
        targets.append(made.target)
        weights.append(made.weight * chip.usable)
    return Batch(*(torch.from_numpy(np.stack(a)) for a in (images, targets, weights)))


def unlabelled_batch(
    pool: chipping.ScenePool,
    teacher_probs: list[np.ndarray],
    cfg: TrainConfig,
    step: int,
    transform,
    rank: int = 0,
) -> Batch:
    """Return the step's unlabelled chips with the teacher's soft targets, augmented alike
    (rank ``r`` draws the step's ``r``-th share, as :func:`labelled_batch` does)."""
    count = unlabelled_count(cfg)
    spec = chipping.ChipSpec(cfg.chip.size, 0.0, cfg.chip.min_valid)
    images, targets, weights = [], [], []
    for i in range(rank * count, (rank + 1) * count):
        rng = chipping.rng_for(cfg.seed, step, 1, i)
        chip = pool.sample(spec, rng, with_buildings=False)
        index, row, col = chip.origin
        probs = window(teacher_probs[index], row, col, spec.size)
        chip, soft = chipping.augment(transform, chip, int(rng.integers(2**31 - 1)), extra=probs)
        images.append(chip.rgb.astype(np.float32) / 255.0)
        targets.append(soft)
        weights.append(chip.usable.astype(np.float32))
    return Batch(*(torch.from_numpy(np.stack(a)) for a in (images, targets, weights)))


def unlabelled_count(cfg: TrainConfig) -> int:
    """Unlabelled chips per rank and step: ``self_training.ratio`` of the batch, at least one."""
    return max(1, round(cfg.self_training.ratio * cfg.batch_size))
