"""Where a run's batches come from: scenes read into memory, or ``ob-chips`` shards streamed.

Either way validation reads the ``val`` areas' whole tiles (rank 0 scores them as ``ob-infer``
would), and no validation tile is ever trained on: in memory the training areas skip them
(:func:`batches.load_areas`); from shards, the chip set must have held them out when it was cut.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from open_buildings.errors import ConfigError
from open_buildings.training import chips as chipping
from open_buildings.training.batches import (
    Batch,
    HeldOut,
    held_out_tiles,
    labelled_batch,
    load_areas,
    unlabelled_batch,
    unlabelled_count,
    with_teacher,
)
from open_buildings.training.chip_shards import ChipSet, ShardReader, open_chipset
from open_buildings.training.config import TrainConfig
from open_buildings.training.distributed import Ranks
from open_buildings.training.label_fraction import keep_fraction
from open_buildings.training.scenes import Scene
from open_buildings.training.shard_stream import (
    ChipBatches,
    StreamDraw,
    StreamPlan,
    read_chips,
    stream_state,
)

#: ``draw(step, transform) -> Batch``
Draw = Callable[[int, Any], Batch]
#: the training images whose statistics ``ob-infer`` compares new tiles with (``rgb``, ``valid``)
RANGE_SAMPLE = 64


@dataclass
class RunData:
    """A run's validation scenes and its batch sources.

    Attributes:
        val: the validation scenes (whole tiles).
        held: the validation tiles, by imagery.
        pool: the labelled scenes in memory (None when streaming).
        labelled: the labelled batch of each step.
        unlabelled: the unlabelled batch of each step (self-training), or None.
        range_images: training images (``rgb``, ``valid``) for the input ranges.
        chipset: the shards, when streaming.
    """

    val: list[Scene]
    held: HeldOut
    pool: chipping.ScenePool | None
    labelled: Draw
    unlabelled: Draw | None = None
    range_images: list[Any] = field(default_factory=list)
    chipset: ChipSet | None = None

    def stream_state(self, cfg: TrainConfig, step: int, ranks: Ranks) -> dict | None:
        """What the checkpoint records of the shard stream (None in memory)."""
        if self.chipset is None:
            return None
        return stream_state(self.chipset, step, ranks.world, cfg.batch_size)


def run_data(cfg: TrainConfig, ranks: Ranks, start: int) -> RunData:
    """Read the validation scenes and set up the training batches from step ``start``.

    Raises:
        ConfigError: data missing, or shards cut without this config's validation tiles.
    """
    val = load_areas(cfg, cfg.val, labelled=True) if cfg.val else []
    held = held_out_tiles(cfg.val, val)
    if cfg.shards:
        return _from_shards(cfg, ranks, start, val, held)
    scenes = load_areas(cfg, cfg.train, labelled=True, held_out=held)
    if cfg.label_fraction < 1:
        keep_fraction(scenes, cfg.label_fraction)
    pool = chipping.ScenePool(scenes)
    st = cfg.self_training
    unlabelled = None
    if st.enabled:
        if not st.unlabelled:
            raise ConfigError("self_training needs 'unlabelled' areas with their 'probabilities'")
        upool, probs = with_teacher(cfg, st.unlabelled, held)

        def unlabelled(step: int, transform: Any) -> Batch:
            return unlabelled_batch(upool, probs, cfg, step, transform, ranks.rank)

    def labelled(step: int, transform: Any) -> Batch:
        return labelled_batch(pool, cfg, step, transform, ranks.rank)

    return RunData(val, held, pool, labelled, unlabelled, range_images=pool.scenes)


def _from_shards(
    cfg: TrainConfig, ranks: Ranks, start: int, val: list[Scene], held: HeldOut
) -> RunData:
    if cfg.label_fraction < 1:
        raise ConfigError("label_fraction works on scenes in memory; remove 'shards' or it")
    chipset = open_chipset(cfg.shards)
    check_held_out(chipset, held, cfg.grid_level)
    st = cfg.self_training
    if st.enabled and st.unlabelled:
        raise ConfigError(
            "with 'shards', the unlabelled chips come from the chip set: cut the 'unlabelled' "
            "areas with ob-chips and leave self_training.unlabelled empty"
        )
    plan = StreamPlan(
        chipset, "train", seed=cfg.seed, window=cfg.stream.window, empty_share=cfg.chip.empty_share
    )
    common = {
        "rank": ranks.rank,
        "world": ranks.world,
        "start": start,
        "stop": cfg.steps,
        "crop": cfg.chip.size,
        "min_valid": cfg.chip.min_valid,
    }
    labelled = StreamDraw(ChipBatches(plan, batch=cfg.batch_size, **common), cfg.stream.workers)
    unlabelled = None
    if st.enabled:
        uplan = StreamPlan(
            chipset, "unlabelled", seed=cfg.seed + 1, window=cfg.stream.window, empty_share=None
        )
        unlabelled = StreamDraw(
            ChipBatches(
                uplan,
                batch=unlabelled_count(cfg),
                temperature=st.temperature,
                **common,
            ),
            cfg.stream.workers,
        )
    return RunData(val, held, None, labelled, unlabelled, sample_images(plan), chipset)


def check_held_out(chipset: ChipSet, held: HeldOut, grid_level: int) -> None:
    """Refuse shards on another grid, or cut without holding out every validation tile.

    Raises:
        ConfigError: naming the tiles, and what to do.
    """
    level = chipset.manifest["grid_level"]
    if level != grid_level:
        raise ConfigError(
            f"the chips in {chipset.root} were cut on the level-{level} grid, the config's "
            f"grid_level is {grid_level}; set grid_level: {level} or cut them again"
        )
    cut_held = {t for tiles in chipset.held_out.values() for t in tiles}
    val_tiles = {t for tiles in held.values() for t in tiles}
    missing = sorted(val_tiles - cut_held)
    trained = sorted(
        {t["tile_id"] for t in chipset.manifest["tiles"] if t["split"] != "val"} & val_tiles
    )
    if trained:
        raise ConfigError(
            f"the chips in {chipset.root} hold validation tiles {trained} outside the 'val' "
            "split; cut the chips again with this ob-chips"
        )
    if missing:
        raise ConfigError(
            f"validation tiles {missing} were not held out when {chipset.root} was cut, so its "
            "training chips may hold them; cut the chips with the same 'val' areas as this config"
        )


def sample_images(plan: StreamPlan, count: int = RANGE_SAMPLE) -> list[Any]:
    """The first ``count`` training chips of epoch 0 (``rgb``, ``valid``), for the input ranges."""
    chips = read_chips(
        plan, ShardReader(plan.chipset), plan.epoch_order(0)[:count], ["image", "usable"]
    )
    return [SimpleNamespace(rgb=c["image"], valid=c["usable"]) for c in chips.values()]


def check_resume(saved: dict | None, now: dict | None) -> None:
    """Refuse to resume a run on other chips, or at another global batch, than it started on.

    Raises:
        ConfigError: saying what differs.
    """
    if saved is None and now is None:
        return
    if saved is None or now is None:
        raise ConfigError(
            "the run was started "
            + ("in memory" if saved is None else "from shards")
            + "; resume it the same way"
        )
    if saved["manifest_shards"] != now["manifest_shards"]:
        raise ConfigError(
            f"the run was trained on the chips of {saved['chips']}, which differ from "
            f"{now['chips']}; resume on the same chips"
        )
    if saved["global_batch"] != now["global_batch"]:
        raise ConfigError(
            f"the run's global batch was {saved['global_batch']} (ranks x batch_size), now "
            f"{now['global_batch']}; resume with the same product"
        )
