"""The tasks of ``ob-vtab``: scene classification from class folders, and building tasks cut from
labelled imagery, each with a fixed test split and VTAB-1k's 800/200/1,000 draws per seed.

Scene sets (UC Merced, EuroSAT, RESISC45, ...) are folders of class folders of images. The
building tasks are chips of ``size`` pixels on the 50 cm grid cut from labelled areas, with three
labels each: whether a building is there, how many (binned), and how much of the chip they cover
(binned). Chips are split into pool and test by whole S2 tiles, so no building crosses the split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.model_selection import train_test_split

from open_buildings.errors import ConfigError
from open_buildings.geo.grid import GridSpec
from open_buildings.geo.imagery import open_imagery
from open_buildings.training.scenes import load_scenes, read_labels

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
#: Test share of a scene set's images (a fixed, stratified split), and of an area's tiles.
TEST_SHARE = 0.4
SPLIT_SEED = 0
#: VTAB-1k: 800 training and 200 validation examples for the sweep, then all 1,000 to train.
N_TRAIN, N_VAL = 800, 200
COUNT_BINS = (0, 1, 2, 4, 7)  # 0 | 1 | 2-3 | 4-6 | 7+
COVER_BINS = (0.0, 1e-9, 0.05, 0.15, 0.30)  # none | up to 5% | 5-15% | 15-30% | over 30%
#: The building tasks' chips lie on a grid of tiles this level; tiles are the split's unit.
CHIP_LEVEL = 15


@dataclass
class Task:
    """Images with one label each, a pool to draw the 1,000 from and a fixed test split."""

    name: str
    images: np.ndarray  # uint8 (N, 3, size, size)
    labels: np.ndarray  # int (N,)
    classes: list[str]
    pool: np.ndarray  # indices
    test: np.ndarray  # indices
    note: str = ""
    groups: np.ndarray | None = None  # the split's unit of each image (a tile), when not images


def image_folder_task(name: str, root: Path, size: int) -> Task:
    """A scene set in class folders, resized to ``size``; test split stratified with a fixed seed.

    Raises:
        ConfigError: the folder holds fewer than two classes with images.
    """
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    images, labels = [], []
    for index, cls in enumerate(classes):
        for path in sorted((root / cls).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                with Image.open(path) as img:
                    rgb = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
                images.append(np.asarray(rgb).transpose(2, 0, 1))
                labels.append(index)
    if len(set(labels)) < 2:
        raise ConfigError(f"{root} holds fewer than two class folders with images")
    y = np.asarray(labels)
    pool, test = train_test_split(
        np.arange(len(y)), test_size=TEST_SHARE, stratify=y, random_state=SPLIT_SEED
    )
    return Task(name, np.stack(images), y, classes, np.sort(pool), np.sort(test))


def building_tasks(areas: Sequence[tuple[str, str, str]], size: int) -> list[Task]:
    """Cut ``size``-pixel chips from labelled areas ``(name, imagery, labels)``; return the
    presence, count and cover tasks over them (chips at least 90% imaged, within tile cores)."""
    spec = GridSpec(level=CHIP_LEVEL)
    images, counts, covers, tiles = [], [], [], []
    for name, imagery, labels in areas:
        for scene in load_scenes(name, open_imagery(imagery), read_labels(labels), spec):
            centres = _centroids(scene.instances)
            taken = np.zeros_like(scene.core)
            rows, cols = np.nonzero(scene.core)
            stride = max(1, size // 4)  # fits more whole chips into a slanted core than a tiling
            for r in range(rows.min(), rows.max() - size + 2, stride):
                for c in range(cols.min(), cols.max() - size + 2, stride):
                    window = (slice(r, r + size), slice(c, c + size))
                    if (
                        not scene.core[window].all()
                        or taken[window].any()
                        or scene.valid[window].mean() < 0.9
                    ):
                        continue
                    taken[window] = True
                    inside = (centres >= (r, c)) & (centres < (r + size, c + size))
                    counts.append(int(inside.all(axis=1).sum()))
                    covers.append(float((scene.instances[window] > 0).mean()))
                    images.append(scene.rgb[(slice(None), *window)])
                    tiles.append(f"{name}/{scene.tile_id}")
    if not images:
        raise ConfigError("the building areas give no chip of imagery; check their paths")
    unique = sorted(set(tiles))
    if len(unique) < 2:
        raise ConfigError(
            f"the building areas give chips in {len(unique)} tile only; the test split takes "
            "whole tiles, so give a larger labelled area (or a smaller --chip)"
        )
    rng = np.random.default_rng(SPLIT_SEED)
    held = set(rng.permutation(unique)[: max(1, round(TEST_SHARE * len(unique)))].tolist())
    is_test = np.array([t in held for t in tiles])
    pool, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    stack = np.stack(images)
    n = np.asarray(counts)
    note = f"{len(stack)} chips of {size} px from {len(unique)} tiles ({len(held)} for test)"
    targets = {
        "building_presence": ((n > 0).astype(int), ["none", "some"]),
        "building_count": (np.digitize(n, COUNT_BINS) - 1, ["0", "1", "2-3", "4-6", "7+"]),
        "building_cover": (
            np.digitize(covers, COVER_BINS) - 1,
            ["0", "<=5%", "5-15%", "15-30%", ">30%"],
        ),
    }
    groups = np.asarray(tiles)
    return [
        Task(name, stack, y, classes, pool, test, note, groups)
        for name, (y, classes) in targets.items()
    ]


def _centroids(instances: np.ndarray) -> np.ndarray:
    """The pixel centroid ``(row, col)`` of every building in a scene, ``(K, 2)``."""
    rows, cols = np.nonzero(instances)
    if rows.size == 0:
        return np.zeros((0, 2))
    _, inverse = np.unique(instances[rows, cols], return_inverse=True)
    n = np.bincount(inverse)
    return np.stack([np.bincount(inverse, rows) / n, np.bincount(inverse, cols) / n], axis=1)


def vtab_1k(task: Task, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw VTAB-1k's 800 training and 200 validation examples from the pool (all of it, split
    4:1, when it holds fewer than 1,000); stratified where every class allows it."""
    pool = task.pool
    n = min(N_TRAIN + N_VAL, len(pool))
    chosen = pool if n == len(pool) else _draw(pool, task.labels[pool], n, seed)[0]
    train, val = _draw(chosen, task.labels[chosen], n - round(n * N_VAL / (N_TRAIN + N_VAL)), seed)
    return np.sort(train), np.sort(val)


def _draw(index: np.ndarray, y: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` of ``index`` and the rest, stratified by ``y`` where sklearn can (each side must be
    able to hold every class, and every class must have two members)."""
    classes, counts = np.unique(y, return_counts=True)
    fits = counts.min() >= 2 and min(n, len(index) - n) >= len(classes)
    return train_test_split(index, train_size=n, stratify=y if fits else None, random_state=seed)
