"""One tile cut into training chips: ``ob-chips``' per-tile work, without Beam.

A tile's scene (read as ``ob-train`` reads it, validation tiles blanked where they reach into
its margin) is covered by ``size`` px windows every ``stride`` px over the bounding box of its
core, grown by ``context`` px into the margin (whose imagery a crop may show but never trains
on). A window is kept when at least ``min_valid`` of it has imagery inside the core (only those
pixels carry loss). Each chip records how many kept windows hold each of its pixels
(:func:`coverage`), so that the stream can draw every pixel as often as any other. The heads'
targets and loss weights are computed once on the whole tile, so a chip's targets do not depend
on where its window was cut; a teacher-labelled chip carries the teacher's probabilities
instead.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from open_buildings.models import heads
from open_buildings.training.chips import cut
from open_buildings.training.scenes import Scene

#: The splits a chip can belong to; a tile is in exactly one.
SPLITS = ("train", "val", "unlabelled")


@dataclass(frozen=True)
class TileChips:
    """What one tile gave: its chips as rows (:mod:`.chip_shards` columns) and its counts.

    Attributes:
        split: ``train``, ``val`` or ``unlabelled``.
        area: the area's name.
        tile_id: the grid tile's S2 token.
        rows: one dict per chip.
        buildings: labelled buildings with imagery in the tile's core (each counted once,
            however many chips it lies in).
    """

    split: str
    area: str
    tile_id: str
    rows: list[dict[str, Any]]
    buildings: int


def window_starts(lo: int, hi: int, size: int, stride: int) -> list[int]:
    """Window starts every ``stride`` px from ``lo`` whose windows cover ``[lo, hi)``."""
    starts = list(range(lo, max(hi - size, lo) + 1, stride))
    if starts[-1] + size < hi:
        starts.append(hi - size)
    return starts


def chip_order(chip_id: str) -> str:
    """A chip's place inside its shard: a hash of its id, so neighbouring windows of one tile
    end up far apart and a shuffle window holds chips of every tile of the shard."""
    return hashlib.sha1(chip_id.encode()).hexdigest()


def shard_of(split: str, area: str, tile_id: str, shards: int) -> int:
    """The shard (``0 .. shards - 1``) a tile's chips go to, the same on every run."""
    digest = hashlib.sha1(f"{split}/{area}/{tile_id}".encode()).hexdigest()
    return int(digest[:12], 16) % shards


def cut_tile(
    scene: Scene,
    split: str,
    *,
    size: int,
    stride: int,
    min_valid: float,
    context: int = 0,
    teacher: np.ndarray | None = None,
) -> TileChips:
    """Cut one scene into chips.

    Args:
        scene: the tile (labelled, unless ``teacher`` is given).
        split: the tile's split.
        size: chip side in pixels.
        stride: step between windows in pixels.
        min_valid: least share of a window with imagery inside the core.
        context: pixels beyond the core's bounding box (within the scene) that windows reach
            into, so that a crop can hold a pixel at the core's edge away from its own edge,
            with the margin's imagery around it, as the in-memory sampler's crops can.
        teacher: float32 ``(C, H, W)`` teacher probabilities on the scene's grid (an unlabelled
            scene, whose ``valid`` already excludes pixels without them).

    Raises:
        ValueError: ``split`` is unknown, or a labelled split's scene has no labels.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    labelled = teacher is None
    if labelled and scene.instances is None:
        raise ValueError(f"tile {scene.tile_id} of {scene.area!r} has no labels to cut")
    usable_all = scene.valid & scene.core
    count = 0
    if labelled:
        made = heads.make_targets(scene.instances)
        target = (made.target > 0.5).astype(np.uint8)
        weight = made.weight.astype(np.float16)
        count = int(np.unique(scene.instances[usable_all]).size) - int(
            (scene.instances[usable_all] == 0).any()
        )
    rows_any = np.flatnonzero(scene.core.any(axis=1))
    cols_any = np.flatnonzero(scene.core.any(axis=0))
    rows: list[dict[str, Any]] = []
    if rows_any.size == 0:
        return TileChips(split, scene.area, scene.tile_id, rows, count)
    height, width = usable_all.shape
    kept = [
        (row, col)
        for row in window_starts(*_grown(rows_any, context, height), size, stride)
        for col in window_starts(*_grown(cols_any, context, width), size, stride)
        if window(usable_all, row, col, size).mean() >= min_valid
    ]
    cover = coverage(usable_all.shape, kept, size)
    for row, col in kept:
        chip = cut(scene, row, col, size)
        chip_cover = window(cover, row, col, size)
        share = np.where(chip.usable, 1.0 / np.maximum(chip_cover, 1), 0.0)
        chip_id = f"{scene.area}/{scene.tile_id}/{row}/{col}"
        record: dict[str, Any] = {
            "chip_id": chip_id,
            "order": chip_order(chip_id),
            "area": scene.area,
            "tile_id": scene.tile_id,
            "split": split,
            "row": row,
            "col": col,
            "buildings": 0,
            "building_px": 0,
            "building_weight": 0.0,
            "usable_weight": float(share.sum()),
            "image": chip.rgb.tobytes(),
            "usable": chip.usable.astype(np.uint8).tobytes(),
            "cover": chip_cover.tobytes(),
            "target": None,
            "weight": None,
            "teacher": None,
        }
        if labelled:
            ids = chip.instances[chip.usable]
            record["buildings"] = int(np.unique(ids[ids > 0]).size)
            cut_target = window(target, row, col, size)
            building = cut_target[0].astype(bool) & chip.usable
            record["building_px"] = int(building.sum())
            record["building_weight"] = float(share[building].sum())
            record["target"] = cut_target.tobytes()
            record["weight"] = window(weight, row, col, size).tobytes()
        else:
            record["teacher"] = window(teacher.astype(np.float16), row, col, size).tobytes()
        rows.append(record)
    return TileChips(split, scene.area, scene.tile_id, rows, count)


def _grown(present: np.ndarray, context: int, length: int) -> tuple[int, int]:
    # [first, last] of the core along one axis, grown by context and kept inside the scene
    return max(int(present[0]) - context, 0), min(int(present[-1]) + 1 + context, length)


def coverage(shape: tuple[int, int], starts: list[tuple[int, int]], size: int) -> np.ndarray:
    """uint16 ``shape``: how many of the ``size`` windows at ``starts`` hold each pixel.

    A pixel in ``n`` kept windows would be drawn ``n`` times as often as one in a single window
    if chips were drawn by their pixels; the stream weighs each chip's pixels by ``1 / n``
    instead, so every pixel is as likely as in the in-memory sampler's draws.
    """
    cover = np.zeros(shape, dtype=np.uint16)
    for row, col in starts:
        cover[row : row + size, col : col + size] += 1
    return cover


def window(array: np.ndarray, row: int, col: int, size: int) -> np.ndarray:
    """``array[..., row:row+size, col:col+size]``, zero where the window leaves the array
    (a chip's targets here; the teacher's soft targets of a chip in memory)."""
    squeeze = array.ndim == 2
    data = array[None] if squeeze else array
    out = np.zeros((data.shape[0], size, size), dtype=data.dtype)
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + size, data.shape[1]), min(col + size, data.shape[2])
    if r1 > r0 and c1 > c0:
        out[:, r0 - row : r1 - row, c0 - col : c1 - col] = data[:, r0:r1, c0:c1]
    return out[0] if squeeze else out
