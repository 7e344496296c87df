"""Training pairs for the two-date change models, from single-date building labels.

There is no multi-date labelled imagery to train on here (LEVIR-CD is for academic evaluation
only), so pairs are made from the labelled areas as in single-temporal supervised learning
(Zheng et al., "Change is Everywhere", ICCV 2021, STAR):

- with probability ``same_share`` both dates are the same chip, the second with its own colour
  change (another season, sun or sensor): nothing changed;
- otherwise the second date is another chip of the areas: a building of one date with no
  building at the same pixel of the other is a change (the XOR of the two building masks).

Targets, per pixel: ``building_before``, ``building_after`` and ``change``; each channel weighs
only pixels with imagery in its date(s) (change: both). Draws are a function of
``(seed, step, index)`` as for single-date batches, so resumed runs repeat them exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import albumentations as A  # noqa: N812
import numpy as np
import torch

from open_buildings.training import chips as chipping
from open_buildings.training.batches import Batch


@dataclass(frozen=True)
class PairSpec:
    """How pairs are drawn: chip size and acceptance, and the share of same-place pairs."""

    chip: chipping.ChipSpec
    same_share: float = 0.5


def recolour() -> A.Compose:
    """The second date's own look for a same-place pair: colour only, never geometry."""
    return A.Compose(
        [
            A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=0.9),
            A.HueSaturationValue(10, 20, 10, p=0.7),
            A.RandomGamma(gamma_limit=(80, 120), p=0.5),
        ]
    )


def draw_pair(
    pool: chipping.ScenePool,
    spec: PairSpec,
    rng: np.random.Generator,
    transform: A.Compose | None,
    colour: A.Compose,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one pair: ``(images (6, S, S) float in [0, 1], targets (3, S, S), weights (3, S, S))``.

    Args:
        pool: labelled scenes.
        spec: chip rules and the same-place share.
        rng: the draw's generator.
        transform: geometric and colour augmentation per date (None: none, for validation).
        colour: the same-place pair's colour change of its second date.
    """
    first = pool.sample(spec.chip, rng, with_buildings=bool(rng.random() >= spec.chip.empty_share))
    same = bool(rng.random() < spec.same_share)
    if transform is not None:
        first, _ = chipping.augment(transform, first, int(rng.integers(2**31 - 1)))
    if same:
        colour.set_random_seed(int(rng.integers(2**31 - 1)))
        rgb = colour(image=np.ascontiguousarray(first.rgb.transpose(1, 2, 0)))["image"]
        second = chipping.Chip(np.ascontiguousarray(rgb.transpose(2, 0, 1)), first.usable,
                               first.instances)  # fmt: skip
    else:
        second = pool.sample(spec.chip, rng, with_buildings=bool(rng.random() >= 0.5))
        if transform is not None:
            second, _ = chipping.augment(transform, second, int(rng.integers(2**31 - 1)))
    before, after = first.instances > 0, second.instances > 0
    images = np.concatenate([first.rgb, second.rgb]).astype(np.float32) / 255.0
    targets = np.stack([before, after, before ^ after]).astype(np.float32)
    weights = np.stack([first.usable, second.usable, first.usable & second.usable])
    return images, targets, weights.astype(np.float32)


def change_batch(
    pool: chipping.ScenePool, cfg: Any, step: int, transform: A.Compose, colour: A.Compose
) -> Batch:
    """Return the step's batch of pairs (``cfg``: a ``TrainConfig``; its ``change`` settings)."""
    spec = PairSpec(
        chipping.ChipSpec(cfg.chip.size, cfg.chip.empty_share, cfg.chip.min_valid),
        cfg.change.same_share,
    )
    drawn = [
        draw_pair(pool, spec, chipping.rng_for(cfg.seed, step, 3, i), transform, colour)
        for i in range(cfg.batch_size)
    ]
    return Batch(*(torch.from_numpy(np.stack(a)) for a in zip(*drawn)))


def validation_pairs(
    pool: chipping.ScenePool, chip_size: int, count: int, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """A fixed set of ``count`` unaugmented pairs from held-out scenes (half of them same-place,
    recoloured), the same for every run and seed of a config."""
    spec = PairSpec(chipping.ChipSpec(chip_size, 0.1, 0.5), 0.5)
    colour = recolour()
    return [
        draw_pair(pool, spec, chipping.rng_for(seed, 10**6, 4, i), None, colour)
        for i in range(count)
    ]
