"""``ob-train``'s batches streamed from ``ob-chips`` shards, in any number of worker processes
and ranks, the same batches for the same step every time.

The stream of one split is a pure function of its position (chips drawn so far):

- **Epoch** ``e``: the shards in an order drawn from ``(seed, e)``, each read front to back
  (its rows are in hash order, so neighbouring rows come from different tiles). A labelled
  epoch draws, from ``(seed, e)`` and with replacement, one chip per chip with buildings in
  proportion to its ``building_weight``, and, for the config's ``chip.empty_share`` of the
  epoch, *empty draws*: any chip in proportion to its ``usable_weight``, cropped where it holds
  no building if it can be (as the in-memory sampler looks for a place without buildings
  around a random pixel with imagery, and keeps the emptiest window it tried when it finds
  none). A chip's weights count each pixel ``1 / cover`` (the kept windows that hold it), and
  the crop is placed around a pixel drawn with the same weights: every building pixel is then
  as likely as any other, as the in-memory sampler draws them, however many overlapping chips
  hold it. The draws are read in stream order. Only the scalar columns are read to plan this.
  An unlabelled epoch is every chip once.
- **Shuffle buffer**: ``stream.window`` consecutive chips of the epoch are read together and
  permuted (``(seed, e, window)``); a reader holds one or two windows, never the dataset.
- **Batches**: global batch ``g`` is positions ``g * world * B`` onwards; rank ``r`` takes its
  ``B`` of them. Two ranks at batch B therefore see exactly the chips one rank sees at 2B.
- **Each chip**: a ``chip.size`` crop of the stored chip around a building pixel drawn by
  ``1 / cover`` (an empty draw: a usable pixel, without buildings if it can be) as the
  in-memory sampler places its chips, and the augmentation, drawn from ``(seed, position)``.

Worker ``w`` of ``W`` makes batches ``start + w``, ``start + w + W``, ...; PyTorch's DataLoader
returns them in that round-robin order, so the step sequence does not depend on ``W``. Resuming
at step ``s`` starts the stream at batch ``s``: the position is the step, and the checkpoint
records the chip set it belongs to (:func:`stream_state`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from open_buildings.errors import ShardError
from open_buildings.training import chips as chipping
from open_buildings.training.batches import Batch
from open_buildings.training.chip_shards import ChipSet, ShardReader, decode
from open_buildings.training.distill import soft_targets

_COLUMNS = ["image", "usable", "cover", "target", "weight", "teacher"]


class StreamPlan:
    """Which chip every position of a split's stream is.

    Args:
        chipset: the shards.
        split: ``train`` (labelled) or ``unlabelled`` (the teacher's labels).
        seed: the run's seed.
        window: chips shuffled together.
        empty_share: the share of an epoch's draws without buildings; None: every chip once.
    """

    def __init__(
        self,
        chipset: ChipSet,
        split: str,
        *,
        seed: int,
        window: int,
        empty_share: float | None,
    ) -> None:
        self.chipset, self.split, self.seed, self.window = chipset, split, seed, window
        self.shards = chipset.split(split)
        if not self.shards:
            raise ShardError(f"{chipset.root} holds no {split!r} chips; cut them with ob-chips")
        reader = ShardReader(chipset)
        self.building_px = np.concatenate([reader.column(s, "building_px") for s in self.shards])
        self.has_building = self.building_px > 0
        sizes = np.array([s.chips for s in self.shards])
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.drawn = empty_share is not None and bool(self.has_building.any())
        with_buildings = int(self.has_building.sum())
        if self.drawn:
            self.building_weight, self.usable_weight = (
                np.concatenate([reader.column(s, name) for s in self.shards]).astype(float)
                for name in ("building_weight", "usable_weight")
            )
            self.empty_draws = round(empty_share / max(1e-9, 1 - empty_share) * with_buildings)
            self.epoch_length = with_buildings + self.empty_draws
        else:
            self.empty_draws, self.epoch_length = 0, int(sizes.sum())
        self._epoch: tuple[int, np.ndarray, np.ndarray] | None = None

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The global row ids of epoch ``epoch`` in stream order (shuffled in windows)."""
        return self._plan_epoch(epoch)[0]

    def empty_draw(self, position: int) -> bool:
        """Whether a stream position is an empty draw (crop without buildings if it can be)."""
        epoch, index = divmod(position, self.epoch_length)
        return bool(self._plan_epoch(epoch)[1][index])

    def _plan_epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if self._epoch is not None and self._epoch[0] == epoch:
            return self._epoch[1], self._epoch[2]
        rng = chipping.rng_for(self.seed, epoch, 7)
        rank = np.empty(len(self.shards), dtype=np.int64)  # each shard's place in this epoch
        rank[rng.permutation(len(self.shards))] = np.arange(len(self.shards))
        if self.drawn:
            full = np.flatnonzero(self.has_building)
            weights = self.building_weight[full] / self.building_weight[full].sum()
            usable = self.usable_weight / self.usable_weight.sum()
            ids = np.concatenate(
                [
                    rng.choice(full, full.size, replace=True, p=weights),
                    rng.choice(usable.size, self.empty_draws, replace=True, p=usable),
                ]
            )
            empty = np.arange(ids.size) >= full.size
        else:
            ids = np.arange(self.has_building.size)
            empty = np.zeros(ids.size, dtype=bool)
        shard = np.searchsorted(self.offsets, ids, side="right") - 1
        # shards in the epoch's order, rows in file order
        keep = np.lexsort((empty, ids, rank[shard]))
        order, empty = ids[keep], empty[keep]
        for start in range(0, order.size, self.window):
            part = slice(start, start + self.window)
            shuffle = rng.permutation(order[part].size)
            order[part], empty[part] = order[part][shuffle], empty[part][shuffle]
        self._epoch = (epoch, order, empty)
        return order, empty

    def locate(self, position: int) -> tuple[int, int, int]:
        """``(epoch, window start, global row id)`` of a stream position."""
        epoch, index = divmod(position, self.epoch_length)
        return epoch, index - index % self.window, int(self.epoch_order(epoch)[index])

    def window_rows(self, epoch: int, start: int) -> np.ndarray:
        """The global row ids of one window."""
        return self.epoch_order(epoch)[start : start + self.window]

    def shard_row(self, row: int) -> tuple[int, int]:
        """``(shard index, row in shard)`` of a global row id."""
        shard = int(np.searchsorted(self.offsets, row, side="right") - 1)
        return shard, row - int(self.offsets[shard])


class ChipBatches(IterableDataset):
    """Batches ``start .. stop - 1`` of one rank, as ``(batch index, Batch)``.

    Args:
        plan: the split's stream.
        batch: chips per rank and batch.
        rank, world: this process among the data-parallel ones.
        start, stop: the batches (steps) to make.
        crop: the side of the training chips cut from the stored ones.
        min_valid, attempts: a crop wants ``min_valid`` usable pixels, and gets ``attempts``
            draws to find them (see :meth:`_crop_at`).
        temperature: the teacher's temperature (``unlabelled`` chips).
    """

    def __init__(
        self,
        plan: StreamPlan,
        *,
        batch: int,
        rank: int = 0,
        world: int = 1,
        start: int = 0,
        stop: int,
        crop: int,
        min_valid: float = 0.5,
        attempts: int = chipping.ChipSpec.attempts,
        temperature: float = 1.0,
    ) -> None:
        if crop > plan.chipset.size:
            raise ShardError(
                f"the chips in {plan.chipset.root} are {plan.chipset.size} px, smaller than the "
                f"config's chip.size {crop}; lower chip.size or cut larger chips"
            )
        self.plan, self.batch, self.rank, self.world = plan, batch, rank, world
        self.start, self.stop, self.crop, self.temperature = start, stop, crop, temperature
        self.min_valid, self.attempts = min_valid, attempts
        self._reader: ShardReader | None = None
        self._windows: OrderedDict[tuple[int, int], dict[int, dict]] = OrderedDict()

    def __iter__(self) -> Iterator[tuple[int, Batch]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        transform = chipping.augmenter()
        for g in range(self.start + worker, self.stop, workers):
            yield g, self.make(g, transform)

    def make(self, g: int, transform) -> Batch:
        """Global batch ``g``'s chips for this rank, cropped, augmented, with their targets."""
        base = (g * self.world + self.rank) * self.batch
        images, targets, weights = [], [], []
        for position in range(base, base + self.batch):
            epoch, start, row = self.plan.locate(position)
            chip = self._chip(epoch, start, row)
            rng = chipping.rng_for(self.plan.seed, position, 3)
            r, c = self._crop_at(chip, rng, self.plan.empty_draw(position))
            window = (slice(r, r + self.crop), slice(c, c + self.crop))
            piece = chipping.Chip(
                np.ascontiguousarray(chip["image"][:, window[0], window[1]]),
                np.ascontiguousarray(chip["usable"][window]),
                None,
            )
            labelled = "target" in chip
            extra = (
                np.concatenate([chip["target"], chip["weight"][None]])
                if labelled
                else chip["teacher"]
            )[:, window[0], window[1]].astype(np.float32)
            piece, soft = chipping.augment(transform, piece, int(rng.integers(2**31 - 1)), extra)
            images.append(piece.rgb.astype(np.float32) / 255.0)
            if labelled:
                targets.append(soft[:-1])
                weights.append(soft[-1] * piece.usable)
            else:
                p = np.clip(soft, 1e-3, 1 - 1e-3)
                logits = torch.from_numpy(np.log(p) - np.log1p(-p))
                targets.append(soft_targets(logits, self.temperature).numpy())
                weights.append(piece.usable.astype(np.float32))
        return Batch(*(torch.from_numpy(np.stack(a)) for a in (images, targets, weights)))

    def _crop_at(
        self, chip: dict, rng: np.random.Generator, empty: bool = False
    ) -> tuple[int, int]:
        """The crop's top-left corner, drawn as the in-memory sampler places its chips.

        A draw with buildings puts a building pixel in the middle half of the crop; an empty
        draw (or a chip without labels) a usable pixel; either drawn by ``1 / cover``. Of up to
        ``attempts`` draws the first with ``min_valid`` of its pixels usable (and, for an empty
        draw, no building pixel) is taken; failing that the most usable, preferring those
        without buildings.
        """
        size, crop = self.plan.chipset.size, self.crop
        usable = chip["usable"].astype(bool)
        building = np.zeros_like(usable)
        if "target" in chip:
            building = chip["target"][0].astype(bool) & usable
        around = np.argwhere(usable if empty or not building.any() else building)
        cumulative = np.cumsum(1.0 / chip["cover"][tuple(around.T)])
        best, best_score = (0, 0), -np.inf
        for _ in range(self.attempts):
            if len(around):
                pick = np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")
                row, col = around[min(int(pick), len(around) - 1)]
                corner = chipping.corner_around(rng, int(row), int(col), crop)
                r, c = (int(v) for v in np.clip(corner, 0, size - crop))
            else:
                r, c = (int(v) for v in rng.integers(0, size - crop + 1, 2))
            share = float(usable[r : r + crop, c : c + crop].mean())
            crossed = empty and bool(building[r : r + crop, c : c + crop].any())
            if share >= self.min_valid and not crossed:
                return r, c
            score = share - (0.5 if crossed else 0.0)
            if score > best_score:
                best, best_score = (r, c), score
        return best

    def _chip(self, epoch: int, start: int, row: int) -> dict:
        key = (epoch, start)
        if key not in self._windows:
            self._windows[key] = self._read_window(epoch, start)
            while len(self._windows) > 2:  # a batch can straddle two windows
                self._windows.popitem(last=False)
        return self._windows[key][row]

    def _read_window(self, epoch: int, start: int) -> dict[int, dict]:
        if self._reader is None:
            self._reader = ShardReader(self.plan.chipset)
        rows = self.plan.window_rows(epoch, start)
        return read_chips(self.plan, self._reader, rows, _COLUMNS)


def read_chips(
    plan: StreamPlan, reader: ShardReader, rows: np.ndarray, columns: list[str]
) -> dict[int, dict]:
    """Global row ids -> their decoded chips, each shard's rows read in one pass."""
    rows = np.unique(rows)
    located = np.array([plan.shard_row(int(r)) for r in rows]).reshape(-1, 2)
    out: dict[int, dict] = {}
    for shard in np.unique(located[:, 0]):
        mine = located[:, 0] == shard
        table = reader.rows(plan.shards[int(shard)], located[mine, 1], columns)
        out.update({int(i): decode(r, plan.chipset) for i, r in zip(rows[mine], table)})
    return out


class StreamDraw:
    """``draw(step, transform) -> Batch`` over a DataLoader of :class:`ChipBatches` (the
    ``Trainer``'s batch source), checking that the stream is at the step asked for."""

    def __init__(self, batches: ChipBatches, workers: int) -> None:
        loader = DataLoader(
            batches,
            batch_size=None,
            num_workers=workers,
            persistent_workers=False,
            prefetch_factor=2 if workers else None,
            # a forked worker copies a process whose libraries run threads mid-operation (a fork
            # beside Beam's gRPC aborted in the child); spawned ones start clean
            multiprocessing_context="spawn" if workers else None,
        )
        self._iter = iter(loader)

    def __call__(self, step: int, transform=None) -> Batch:
        """The step's batch (``transform`` is unused: the workers hold their own)."""
        index, batch = next(self._iter)
        if index != step:
            raise RuntimeError(f"the chip stream is at batch {index}, the trainer at step {step}")
        return batch


def stream_state(chipset: ChipSet, step: int, world: int, batch: int) -> dict:
    """What the checkpoint records of the stream: the chip set and the position."""
    return {
        "chips": str(chipset.root),
        "manifest_shards": sorted(s.sha256 for s in chipset.shards),
        "position": step * world * batch,
        "global_batch": world * batch,
    }
