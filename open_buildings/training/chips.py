"""Chips: fixed-size windows cut from scenes, augmented, with the head's targets.

Sampling is a pure function of ``(seed, step, index)``: the same step always yields the same
chips and augmentations, so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import albumentations as A  # noqa: N812
import numpy as np

from open_buildings.training.scenes import Scene


@dataclass(frozen=True)
class ChipSpec:
    """How chips are cut.

    Attributes:
        size: chip side in pixels (50 cm each).
        empty_share: share of chips drawn from places with no building.
        min_valid: a chip needs at least this share of pixels with imagery inside its tile's core.
        attempts: random windows tried before a draw gives up and takes the best one seen.
    """

    size: int = 256
    empty_share: float = 0.1
    min_valid: float = 0.5
    attempts: int = 30


@dataclass
class Chip:
    """One window of a scene (before targets are made).

    Attributes:
        rgb: uint8 ``(3, S, S)`` (or more bands).
        usable: bool ``(S, S)``: imagery present and inside the tile's core.
        instances: int32 ``(S, S)`` or None for unlabelled scenes.
        origin: ``(scene index in its pool, row, col)`` of the window's top-left corner.
    """

    rgb: np.ndarray
    usable: np.ndarray
    instances: np.ndarray | None
    origin: tuple[int, int, int] = (-1, 0, 0)


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    """Return the generator for one draw, fixed by the run's seed and the draw's keys."""
    return np.random.default_rng([seed, *keys])


def corner_around(rng: np.random.Generator, row: int, col: int, size: int) -> tuple[int, int]:
    """The top-left corner of a ``size`` window that holds pixel (row, col) in its middle half."""
    return (
        row - int(rng.integers(size // 4, 3 * size // 4)),
        col - int(rng.integers(size // 4, 3 * size // 4)),
    )


def cut(scene: Scene, row: int, col: int, size: int) -> Chip:
    """Cut the ``size`` window at (row, col), zero-padding where it leaves the scene."""
    height, width = scene.valid.shape
    rgb = np.zeros((scene.rgb.shape[0], size, size), dtype=np.uint8)
    usable = np.zeros((size, size), dtype=bool)
    instances = None if scene.instances is None else np.zeros((size, size), dtype=np.int32)
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + size, height), min(col + size, width)
    if r1 > r0 and c1 > c0:
        dst = (slice(r0 - row, r1 - row), slice(c0 - col, c1 - col))
        src = (slice(r0, r1), slice(c0, c1))
        rgb[:, dst[0], dst[1]] = scene.rgb[:, src[0], src[1]]
        usable[dst] = scene.valid[src] & scene.core[src]
        if instances is not None:
            instances[dst] = scene.instances[src]
    return Chip(rgb, usable, instances)


class ScenePool:
    """Scenes to draw chips from, with what each draw needs computed once.

    Args:
        scenes: the scenes (labelled or not).
    """

    def __init__(self, scenes: Sequence[Scene]) -> None:
        if not scenes:
            raise ValueError("a chip pool needs at least one scene")
        self.scenes = list(scenes)
        self.usable_px = np.array([(s.valid & s.core).sum() for s in scenes], dtype=float)
        self.building_px: list[tuple[np.ndarray, np.ndarray]] = []
        for s in self.scenes:
            if s.instances is None:
                self.building_px.append((np.empty(0, int), np.empty(0, int)))
            else:
                self.building_px.append(np.nonzero((s.instances > 0) & s.core))
        self.building_counts = np.array([rows.size for rows, _ in self.building_px], dtype=float)
        # Every 16th usable pixel is enough to centre windows on imagery in sparse scenes.
        self.usable_at = [np.nonzero(s.valid[::16, ::16] & s.core[::16, ::16]) for s in scenes]

    def sample(self, spec: ChipSpec, rng: np.random.Generator, *, with_buildings: bool) -> Chip:
        """Draw one chip: around a random building, or from a place without buildings.

        Args:
            spec: chip size and acceptance rules.
            rng: the draw's generator (see :func:`rng_for`).
            with_buildings: centre the chip near a random building pixel; otherwise near a random
                pixel with imagery, looking for a window with no building in it (falling back to
                the emptiest window tried).
        """
        use_buildings = with_buildings and self.building_counts.sum() > 0
        weights = self.building_counts if use_buildings else self.usable_px
        index = int(rng.choice(len(self.scenes), p=weights / weights.sum()))
        scene = self.scenes[index]
        rows, cols = self.building_px[index] if use_buildings else self.usable_at[index]
        stride = 1 if use_buildings else 16
        size = spec.size
        height, width = scene.valid.shape
        best, best_score = None, -np.inf
        for _ in range(spec.attempts):
            if rows.size:
                k = int(rng.integers(rows.size))
                row, col = corner_around(rng, int(rows[k]) * stride, int(cols[k]) * stride, size)
            else:
                row = int(rng.integers(-size // 4, max(height - 3 * size // 4, 1)))
                col = int(rng.integers(-size // 4, max(width - 3 * size // 4, 1)))
            chip = cut(scene, row, col, size)
            chip.origin = (index, row, col)
            share = chip.usable.mean()
            has_building = chip.instances is not None and bool(
                (chip.instances[chip.usable] > 0).any()
            )
            if share >= spec.min_valid and (with_buildings or not has_building):
                return chip
            score = share - (0.5 if has_building and not with_buildings else 0.0)
            if score > best_score:
                best, best_score = chip, score
        return best


def augmenter(scale_limit: float = 0.1, rotate_limit: float = 10.0) -> A.Compose:
    """Return the augmentation pipeline.

    Geometric transforms (flips, 90° rotations, small scale and rotation changes) apply to the
    image and, identically, to every mask (instances, usable pixels, soft targets), with nearest
    interpolation for masks. Colour transforms touch the image only and work for any band count.
    """
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomRotate90(p=0.5),
            A.Affine(
                scale=(1 - scale_limit, 1 + scale_limit),
                rotate=(-rotate_limit, rotate_limit),
                border_mode=0,
                fill=0,
                fill_mask=0,
                p=0.5,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
            A.RandomGamma(gamma_limit=(85, 115), p=0.3),
        ]
    )


def augment(
    transform: A.Compose, chip: Chip, seed: int, extra: np.ndarray | None = None
) -> tuple[Chip, np.ndarray | None]:
    """Apply ``transform`` to a chip with a fixed seed; ``extra`` (C, S, S) float masks follow it.

    Args:
        transform: from :func:`augmenter`.
        chip: the chip to augment.
        seed: makes the draw reproducible.
        extra: optional float maps that must move with the image (e.g. a teacher's soft targets).
    """
    transform.set_random_seed(seed)
    masks = [chip.usable.astype(np.uint8)]
    if chip.instances is not None:
        masks.append(chip.instances)
    if extra is not None:
        masks.extend(list(extra))
    out = transform(image=np.ascontiguousarray(chip.rgb.transpose(1, 2, 0)), masks=masks)
    rgb = np.ascontiguousarray(out["image"].transpose(2, 0, 1))
    usable = out["masks"][0].astype(bool)
    instances = out["masks"][1].astype(np.int32) if chip.instances is not None else None
    first_extra = 2 if chip.instances is not None else 1
    soft = None if extra is None else np.stack(out["masks"][first_extra:]).astype(np.float32)
    return Chip(rgb, usable, instances), soft
