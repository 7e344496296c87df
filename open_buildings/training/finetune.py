"""``ob-finetune``'s plan: the user's labels checked, the area split by whole tiles, its config.

The area is cut into S2 tiles of level :data:`SPLIT_LEVEL` (about 150 m), finer than inference's,
so that a town holds enough of them for a spatial split. About :data:`HELD_SHARE` of the labelled
buildings, in whole tiles, are held back: the run never trains on them (``ob-train``'s validation
tiles are skipped and blanked in their neighbours' margins), and early stopping, calibration and
the before/after figures are measured on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import geopandas as gpd
import numpy as np
import shapely

from open_buildings.errors import ConfigError
from open_buildings.geo import grid as geogrid
from open_buildings.geo.imagery import ImagerySource
from open_buildings.training.config import TrainConfig
from open_buildings.training.scenes import Scene, load_scenes

SPLIT_LEVEL = 16
HELD_SHARE = 0.2
MIN_BUILDINGS = 20
#: The split does not change with ``--seed``: seeds of one area are compared on the same tiles.
SPLIT_SEED = 0
#: A tile is used when it holds at least this share of a training chip's pixels of imagery
#: (``ChipConfig.min_valid`` of a 192 px chip, as ob-train's own rule).
CHIP, MIN_VALID = 192, 0.5
#: Fewer buildings or tiles than these to train on get a warning, and the encoder is frozen
#: unless ``--freeze-encoder no`` (see ob-finetune).
FEW_BUILDINGS, FEW_TILES = 100, 4
#: Self-training needs at least this many unlabelled tiles of the area.
MIN_UNLABELLED = 2
#: A tenth of the base recipe's learning rate: the weights start near a good model.
LR = 2e-4
VAL_EVERY = 25
PATIENCE = 6


@dataclass(frozen=True)
class Split:
    """The tiles (S2 tokens) to train on and to hold back, with their building counts."""

    train: list[str]
    held: list[str]
    n_train: int
    n_held: int
    #: tiles with imagery, mostly inside the area, and no label: self-training's
    unlabelled: list[str] = field(default_factory=list)
    #: the training tiles as read for the split (the label-offset estimate reuses them)
    train_scenes: list[Scene] = field(default_factory=list, compare=False, repr=False)


def area_of_interest(source: ImagerySource, region: shapely.Geometry | None) -> shapely.Geometry:
    """The imagery's lon/lat footprint, clipped to the region when one is given."""
    box = shapely.box(*source.bounds_lonlat())
    return box if region is None else shapely.intersection(box, region)


def split_tiles(
    labels: gpd.GeoDataFrame,
    area: shapely.Geometry,
    source: ImagerySource,
    *,
    share: float = HELD_SHARE,
    seed: int = SPLIT_SEED,
) -> Split:
    """Split the labelled tiles of ``area`` that have imagery into training and held-back tiles.

    Each candidate tile is read once, as a training scene (kept for the training tiles). Tiles
    are taken in a seeded random order and held back until they hold ``share`` of the
    buildings (at least one tile); a building belongs to the tile that owns its centroid.

    Raises:
        ConfigError: the labels and the imagery do not overlap, fewer than
            :data:`MIN_BUILDINGS` buildings lie on imagery, or they fill fewer than two tiles.
    """
    spec = geogrid.GridSpec(level=SPLIT_LEVEL)
    points = shapely.centroid(labels.geometry.values)
    inside = shapely.contains_xy(area, shapely.get_x(points), shapely.get_y(points))
    if not inside.any():
        west, south, east, north = labels.total_bounds
        raise ConfigError(
            f"the labels ({west:.4f}, {south:.4f}, {east:.4f}, {north:.4f}) do not overlap the "
            f"imagery (within the region, when one is given: "
            f"{', '.join(f'{v:.4f}' for v in area.bounds) or 'empty'}); check --labels, "
            "--imagery and --region"
        )
    lon, lat = shapely.get_x(points[inside]), shapely.get_y(points[inside])
    owned: dict[str, int] = {}  # labelled tiles, and unlabelled ones mostly inside the area
    for tile in geogrid.cover(area, spec):
        n = int(tile.owns(lon, lat).sum())
        if n or shapely.intersection(tile.core, area).area >= 0.5 * tile.core.area:
            owned[tile.id] = n
    # A tile needs a chip's worth of imagery (ob-train's rule) and half of that in its core: its
    # margin can be blanked in training when a neighbour is held back.
    enough = CHIP * CHIP * MIN_VALID
    scenes = {
        s.tile_id: s
        for s in load_scenes("area", source, labels, spec, min_valid_px=enough, only=owned)
        if (s.valid & s.core).sum() >= enough / 2
    }
    counts = {t: n for t, n in owned.items() if n and t in scenes}
    unlabelled = [t for t, n in owned.items() if not n and t in scenes]
    total = sum(counts.values())
    if total < MIN_BUILDINGS:
        raise ConfigError(
            f"only {total} labelled buildings lie on the imagery; ob-finetune needs at least "
            f"{MIN_BUILDINGS}: label more of the area, or check that the labels match the imagery"
        )
    if len(counts) < 2:
        raise ConfigError(
            f"the {total} labelled buildings lie in one {SPLIT_LEVEL}-level tile (about 150 m); "
            "label buildings over a wider area, so that some can be held back for checking"
        )
    order = sorted(counts)
    order = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
    held: list[str] = []
    while sum(counts[t] for t in held) < share * total and len(held) < len(order) - 1:
        held.append(order[len(held)])
    train = sorted(set(order) - set(held))
    n_train, n_held = sum(counts[t] for t in train), sum(counts[t] for t in held)
    train_scenes = [scenes[t] for t in train]
    return Split(train, sorted(held), n_train, n_held, sorted(unlabelled), train_scenes)


def tiles_region(tiles: list[str], area: shapely.Geometry) -> shapely.Geometry:
    """Tiles' cores within the area (a region for ob-infer, with ``write_region``)."""
    spec = geogrid.GridSpec(level=SPLIT_LEVEL)
    cores = shapely.union_all([geogrid.tile_from_id(t, spec).core for t in tiles])
    return shapely.intersection(cores, area)


def finetune_config(
    base: str,
    base_name: str,
    *,
    imagery: str,
    labels: str,
    split: Split,
    out: str,
    minutes: float,
    seed: int = 0,
    bands: tuple[int, int, int] | None = None,
    threads: int | None = None,
    teacher: str | None = None,
    freeze_encoder: bool = False,
) -> TrainConfig:
    """The ``ob-train`` config of a fine-tuning run: the project's training (mixup on), started
    from the base checkpoint's weights at a constant learning rate, validated on the held-back
    tiles every :data:`VAL_EVERY` steps, ended by the time budget or :data:`PATIENCE` validations
    without gain, and keeping the best weights. With ``teacher`` (the ``--out`` of an
    ``ob-infer --write-probabilities`` run of the base over the unlabelled tiles, on the split's
    grid), it self-trains on those tiles too. ``freeze_encoder`` trains the decoder and heads
    only."""
    area = {"imagery": imagery, "labels": labels, "bands": bands}
    self_training: dict[str, Any] = {"enabled": False}
    if teacher:
        unlabelled = {"imagery": imagery, "bands": bands, "tiles": split.unlabelled}
        self_training = {
            "enabled": True,
            "unlabelled": [{"name": "unlabelled", "probabilities": teacher, **unlabelled}],
        }
    return TrainConfig.model_validate(
        {
            "model": base_name,
            "start_from": base,
            "freeze_encoder": freeze_encoder,
            "train": [{"name": "train", "tiles": split.train, **area}],
            "val": [{"name": "held_back", "tiles": split.held, **area}],
            "grid_level": SPLIT_LEVEL,
            "chip": {"size": CHIP, "empty_share": 0.1, "min_valid": MIN_VALID},
            "batch_size": 8,
            "steps": 100_000,  # the time budget or patience ends the run
            "lr": LR,
            "lr_schedule": "constant",
            "warmup_steps": 10,
            "val_every": VAL_EVERY,
            "checkpoint_every": VAL_EVERY,
            "mixup": {"enabled": True, "alpha": 0.4, "prob": 0.5},
            "self_training": self_training,
            "stopping": {"max_minutes": minutes, "patience": PATIENCE, "keep_best": True},
            "bf16": False,
            "threads": threads,
            "seed": seed,
            "out": out,
        }
    )
