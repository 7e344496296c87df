"""Training pairs for the two-date change models, from single-date building labels.

There is no multi-date labelled imagery to train on here (LEVIR-CD is for academic evaluation
only), so pairs are made from the labelled areas as in single-temporal supervised learning
(Zheng et al., "Change is Everywhere", ICCV 2021, STAR):

- with probability ``same_share`` both dates are the same chip, the second with its own colour
  change (another season, sun or sensor): nothing changed;
- otherwise the second date is another chip of the areas: a building of one date with no
  building at the same pixel of the other is a change (the XOR of the two building masks).

Where the config has ``dated`` areas (one place at several dates, each date with its own labels),
``dated_share`` of the pairs are real: a window of one date and the same window of the next,
read on the same tile grid, augmented alike, the change being the XOR of the two dates' buildings.

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

from open_buildings.errors import ConfigError
from open_buildings.training import chips as chipping
from open_buildings.training.batches import Batch, HeldOut, chip_spec, load_areas
from open_buildings.training.config import AreaConfig
from open_buildings.training.scenes import Scene


@dataclass
class DatedPairs:
    """Real pairs: the earlier date's scenes (windows are drawn there) and, for each, the next
    date's scene of the same tile."""

    pool: chipping.ScenePool
    later: list[Scene]


def load_dated(cfg: Any, held: HeldOut) -> DatedPairs | None:
    """Read the config's ``change.dated`` areas into pairs of consecutive dates (None if none).

    Raises:
        ConfigError: a dated area's consecutive dates share no tile with imagery.
    """
    before: list[Scene] = []
    after: list[Scene] = []
    for area in cfg.change.dated:
        per_date = []
        for day in area.dates:
            single = AreaConfig.model_construct(
                name=area.name,
                imagery=day.imagery,
                labels=day.labels,
                bands=day.bands,
                scale=None,
                tiles=area.tiles,
            )  # fmt: skip  (paths are resolved already)
            scenes = load_areas(cfg, [single], labelled=True, held_out=held)
            per_date.append({scene.tile_id: scene for scene in scenes})
        for first, second in zip(per_date, per_date[1:]):
            common = sorted(first.keys() & second.keys())
            if not common:
                raise ConfigError(
                    f"dated area {area.name!r}: two consecutive dates share no tile with "
                    "imagery; check their imagery covers the same place"
                )
            before.extend(first[t] for t in common)
            after.extend(second[t] for t in common)
    return DatedPairs(chipping.ScenePool(before), after) if before else None


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
    return _arrays(first, second)


def draw_dated(
    pairs: DatedPairs, spec: PairSpec, rng: np.random.Generator, transform: A.Compose | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one real pair: a window of one date and the same window of the next (as
    :func:`draw_pair` returns it), both augmented with the same draw."""
    first = pairs.pool.sample(
        spec.chip, rng, with_buildings=bool(rng.random() >= spec.chip.empty_share)
    )
    index, row, col = first.origin
    second = chipping.cut(pairs.later[index], row, col, spec.chip.size)
    if transform is not None:
        seed = int(rng.integers(2**31 - 1))
        first, _ = chipping.augment(transform, first, seed)
        second, _ = chipping.augment(transform, second, seed)
    return _arrays(first, second)


def _arrays(
    first: chipping.Chip, second: chipping.Chip
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    before, after = first.instances > 0, second.instances > 0
    images = np.concatenate([first.rgb, second.rgb]).astype(np.float32) / 255.0
    targets = np.stack([before, after, before ^ after]).astype(np.float32)
    weights = np.stack([first.usable, second.usable, first.usable & second.usable])
    return images, targets, weights.astype(np.float32)


def change_batch(
    pool: chipping.ScenePool,
    cfg: Any,
    step: int,
    transform: A.Compose,
    colour: A.Compose,
    dated: DatedPairs | None = None,
) -> Batch:
    """Return the step's batch of pairs (``cfg``: a ``TrainConfig``; its ``change`` settings):
    real ones from ``dated`` for ``dated_share`` of them, made ones otherwise."""
    spec = PairSpec(chip_spec(cfg), cfg.change.same_share)
    drawn = []
    for i in range(cfg.batch_size):
        rng = chipping.rng_for(cfg.seed, step, 3, i)
        if dated is not None and rng.random() < cfg.change.dated_share:
            drawn.append(draw_dated(dated, spec, rng, transform))
        else:
            drawn.append(draw_pair(pool, spec, rng, transform, colour))
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
