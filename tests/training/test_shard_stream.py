"""ob-train's stream of ob-chips shards: every chip once an epoch, empties thinned, the same
batches whatever the workers, ranks that split one global batch, resume at a step, refusals."""

from pathlib import Path

import numpy as np
import pytest
import torch

from open_buildings.errors import ConfigError, ShardError
from open_buildings.training import chip_shards, sources
from open_buildings.training import chips as chipping
from open_buildings.training.shard_stream import ChipBatches, StreamDraw, StreamPlan
from tests.training.test_chips_job import _run


@pytest.fixture(scope="module")
def chipset(tmp_path_factory) -> chip_shards.ChipSet:
    out = tmp_path_factory.mktemp("stream") / "chips"
    _run(out, "chip={size: 96, stride: 32}", "tiles_per_shard=1")
    return chip_shards.open_chipset(out)


def _plan(chipset, **kw) -> StreamPlan:
    args = {"seed": 0, "window": 16, "empty_share": None, **kw}
    return StreamPlan(chipset, "train", **args)


def test_an_unlabelled_epoch_holds_every_chip_once_shuffled_in_windows(chipset) -> None:
    plan = _plan(chipset)  # empty_share None: every chip once, as for the teacher's chips
    n = sum(s.chips for s in chipset.split("train"))
    assert plan.epoch_length == n > 40
    first, second = plan.epoch_order(0), plan.epoch_order(1)
    assert sorted(first.tolist()) == list(range(n)) == sorted(second.tolist())
    assert first.tolist() != second.tolist()  # each epoch its own order
    assert first.tolist() != sorted(first.tolist())  # shuffled...
    for start in range(0, n, 16):  # ...but only inside each window of 16 (one shard here)
        assert sorted(first[start : start + 16].tolist()) == list(range(start, min(start + 16, n)))
    np.testing.assert_array_equal(_plan(chipset).epoch_order(1), second)  # a pure function


def test_a_labelled_epoch_draws_chips_by_building_pixels_and_empties_by_usable_pixels(
    tmp_path: Path,
) -> None:
    _run(tmp_path / "small", "chip={size: 32, stride: 32}")  # small chips: some hold no building
    chipset = chip_shards.open_chipset(tmp_path / "small")
    full = _plan(chipset)
    with_buildings = int(full.has_building.sum())
    assert (~full.has_building).sum() > 2 and with_buildings > 2
    plan = _plan(chipset, empty_share=0.2)
    drawn = plan.epoch_order(0)
    empty_draws = round(0.2 / 0.8 * with_buildings)
    assert drawn.size == plan.epoch_length == with_buildings + empty_draws
    flags = np.array([plan.empty_draw(p) for p in range(plan.epoch_length)])
    assert flags.sum() == empty_draws
    # chips side by side hold each pixel once (but the last ones, shifted to end at the core's
    # edge, overlap their neighbours): most weights are the building pixel counts
    px, usable = plan.building_weight, plan.usable_weight
    assert (px <= plan.building_px + 1e-3).all() and np.isclose(px, plan.building_px).mean() > 0.7
    # draws with buildings: with replacement, in proportion to building pixels (size-biased)
    epochs = range(20)
    many = np.concatenate([plan.epoch_order(e) for e in epochs])
    empty = np.concatenate(
        [
            [plan.empty_draw(e * plan.epoch_length + i) for i in range(plan.epoch_length)]
            for e in epochs
        ]
    )
    built = many[~empty]
    assert plan.has_building[built].all()
    expected = (px[px > 0] ** 2).sum() / px[px > 0].sum()  # E[px] under p ~ px
    assert abs(px[built].mean() - expected) < 0.1 * expected
    assert px[built].mean() > 1.2 * px[px > 0].mean()
    # empty draws: any chip (with buildings or not), in proportion to its usable pixels
    blank = many[empty]
    assert plan.has_building[blank].any() and (~plan.has_building[blank]).any()
    expected = (usable**2).sum() / usable.sum()
    assert abs(usable[blank].mean() - expected) < 0.05 * expected
    assert usable[blank].mean() > usable.mean()  # usable pixels weigh: not drawn uniformly
    assert plan.epoch_order(1).tolist() != drawn.tolist()
    none = _plan(chipset, empty_share=0.0)
    assert none.epoch_length == with_buildings
    assert none.has_building[none.epoch_order(0)].all()
    assert not any(none.empty_draw(p) for p in range(none.epoch_length))


def _batches(chipset, workers: int, steps: range, **kw) -> list:
    stream = ChipBatches(
        _plan(chipset), batch=kw.pop("batch", 3), start=steps.start, stop=steps.stop, crop=64, **kw
    )
    draw = StreamDraw(stream, workers)
    return [draw(step) for step in steps]


def test_the_batches_do_not_depend_on_the_workers_and_resume_at_a_step(chipset) -> None:
    alone = _batches(chipset, 0, range(0, 5))
    workers = _batches(chipset, 2, range(0, 5))
    resumed = _batches(chipset, 2, range(3, 5))
    for a, b in zip(alone, workers):
        for name in ("images", "targets", "weights"):
            assert torch.equal(getattr(a, name), getattr(b, name))
    for a, b in zip(alone[3:], resumed):
        assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    batch = alone[0]
    assert batch.images.shape == (3, 3, 64, 64) and batch.targets.shape == (3, 2, 64, 64)
    assert batch.targets[:, 0].sum() > 0 and (batch.weights >= 0).all()
    # the loss weights are the heads' (>= 1) where the pixel is usable, 0 elsewhere
    assert ((batch.weights == 0) | (batch.weights >= 1 - 1e-3)).all()


def test_crops_are_centred_near_a_building_and_on_imagery(chipset) -> None:
    stream = ChipBatches(_plan(chipset), batch=1, stop=1, crop=64, min_valid=0.5)
    size = chipset.size  # 96: crops start at 0..32
    usable = np.ones((size, size), np.uint8)
    target = np.zeros((2, size, size), np.uint8)
    target[0, 5, 90] = 1  # one building pixel near the top right corner
    once = np.ones((size, size), np.uint16)  # every pixel in this chip alone
    chip = {"usable": usable, "target": target, "cover": once}
    corners = [stream._crop_at(chip, chipping.rng_for(0, k)) for k in range(200)]
    # every crop holds the building pixel (a uniform crop would hold it in 1 of 33 x 6 cases)
    assert all(r <= 5 < r + 64 and c <= 90 < c + 64 for r, c in corners)
    # an empty draw of the same chip: a crop without the building, wherever that is possible
    corners = [stream._crop_at(chip, chipping.rng_for(3, k), empty=True) for k in range(200)]
    assert not any(r <= 5 < r + 64 and c <= 90 < c + 64 for r, c in corners)
    assert len(set(corners)) > 20
    # pixels that more chips hold are drawn less often in each: 1 / cover
    two = np.zeros_like(target)
    two[0, 48, 10], two[0, 48, 86] = 1, 1
    cover = np.ones((size, size), np.uint16)
    cover[:, 48:] = 9  # the right-hand pixel lies in 9 chips, the left-hand one in this chip only
    corners = [
        stream._crop_at({"usable": usable, "target": two, "cover": cover}, chipping.rng_for(5, k))
        for k in range(400)
    ]
    left = sum(c <= 10 < c + 64 and not c <= 86 < c + 64 for _, c in corners)
    right = sum(c <= 86 < c + 64 and not c <= 10 < c + 64 for _, c in corners)
    assert left + right == 400 and 0.85 < left / 400 < 0.95  # 9 to 1
    crowded = {"usable": usable, "target": np.ones_like(target), "cover": once}  # all buildings
    r, c = stream._crop_at(crowded, chipping.rng_for(4, 0), empty=True)  # the most usable then
    assert usable[r : r + 64, c : c + 64].mean() == 1.0
    # without buildings: anywhere, but on imagery when a crop with min_valid of it exists
    usable[:, 48:] = 0  # imagery in the left half only
    empty = {"usable": usable, "target": np.zeros_like(target), "cover": once}
    corners = [stream._crop_at(empty, chipping.rng_for(1, k)) for k in range(200)]
    assert all(usable[r : r + 64, c : c + 64].mean() >= 0.5 for r, c in corners)
    assert len({c for _, c in corners}) > 5 and len({r for r, _ in corners}) > 10
    usable[:, 20:] = 0  # no crop reaches min_valid: the most usable of the draws
    r, c = stream._crop_at(empty, chipping.rng_for(2, 0))
    assert c <= 2 and usable[r : r + 64, c : c + 64].mean() > 0.28


def test_two_ranks_at_batch_b_draw_the_chips_of_one_rank_at_2b(chipset) -> None:
    one = _batches(chipset, 0, range(0, 3), batch=4)
    halves = [_batches(chipset, 0, range(0, 3), batch=2, rank=r, world=2) for r in (0, 1)]
    for step, whole in enumerate(one):
        for name in ("images", "targets", "weights"):
            joined = torch.cat([getattr(halves[0][step], name), getattr(halves[1][step], name)])
            assert torch.equal(getattr(whole, name), joined)


def test_a_stream_out_of_step_with_the_trainer_is_a_bug(chipset) -> None:
    draw = StreamDraw(ChipBatches(_plan(chipset), batch=1, start=0, stop=3, crop=64), 0)
    draw(0)
    with pytest.raises(RuntimeError, match="at batch 1, the trainer at step 2"):
        draw(2)


def test_chips_smaller_than_the_training_chip_are_refused(chipset) -> None:
    with pytest.raises(ShardError, match="lower chip.size"):
        ChipBatches(_plan(chipset), batch=1, stop=1, crop=128)


def test_shards_without_the_runs_validation_tiles_held_out_are_refused(chipset) -> None:
    level = chipset.manifest["grid_level"]
    sources.check_held_out(chipset, {"x": {"39eb08cd"}}, level)  # the tile held out: fine
    with pytest.raises(ConfigError, match="were not held out"):
        sources.check_held_out(chipset, {"x": {"39eb0f2d"}}, level)
    with pytest.raises(ConfigError, match="outside the 'val' split"):
        sources.check_held_out(chipset, {"x": {"39eb0f33"}}, level)
    with pytest.raises(ConfigError, match="level-14 grid"):
        sources.check_held_out(chipset, {}, 15)


def test_resuming_on_other_chips_or_another_global_batch_is_refused() -> None:
    saved = {"chips": "a", "manifest_shards": ["1"], "position": 8, "global_batch": 8}
    sources.check_resume(saved, dict(saved))
    sources.check_resume(None, None)
    with pytest.raises(ConfigError, match="same chips"):
        sources.check_resume(saved, {**saved, "manifest_shards": ["2"]})
    with pytest.raises(ConfigError, match="same product"):
        sources.check_resume(saved, {**saved, "global_batch": 4})
    with pytest.raises(ConfigError, match="in memory"):
        sources.check_resume(None, saved)


def test_ob_train_learns_from_shards_and_resumes_exactly(
    chipset, tmp_path: Path, monkeypatch
) -> None:
    from tests.training.conftest import assert_resume_is_exact, make_config

    val = (
        "val=[{name: banepa_val, imagery: imagery/banepa, "
        "labels: labels/banepa_4tiles.geojson, tiles: [39eb08cd]}]"
    )

    def config(*extra: str):
        return make_config(
            tmp_path, "train=[]", f"shards={chipset.root}", val, "chip={size: 64}", *extra
        )

    assert_resume_is_exact(config, tmp_path, monkeypatch, "stream={window: 8, workers: 1}")
    from open_buildings.training.state import load_stream

    state = load_stream(tmp_path / "b" / "checkpoint")
    assert state["position"] == 4 * 2 and state["global_batch"] == 2


def test_self_training_streams_the_teachers_chips(tmp_path: Path) -> None:
    from open_buildings.training.loop import train
    from tests.training.conftest import make_config
    from tests.training.test_split_and_teacher import _teacher_run

    _, teacher = _teacher_run(tmp_path)
    unlabelled = f"unlabelled=[{{name: u, imagery: imagery/banepa, probabilities: {teacher}}}]"
    _run(tmp_path / "chips", "chip={size: 96, stride: 48}", unlabelled)
    chipset = chip_shards.open_chipset(tmp_path / "chips")
    assert chipset.split("unlabelled")
    st = "self_training={enabled: true, ratio: 0.5, temperature: 2.0}"
    cfg = make_config(tmp_path, "train=[]", f"shards={chipset.root}", "chip={size: 64}", st)
    result = train(cfg, progress=False)
    assert all(h["kl"] > 0 for h in result["history"])
    plan = StreamPlan(chipset, "unlabelled", seed=1, window=8, empty_share=None)
    stream = ChipBatches(plan, batch=2, stop=1, crop=64, temperature=2.0)
    batch = stream.make(0, chipping.augmenter())
    # soft targets at T = 2 lie inside sigmoid(logit(0.001) / 2) = 0.031 .. 0.969
    assert batch.targets.shape == (2, 2, 64, 64)
    assert 0.03 < float(batch.targets.min()) and float(batch.targets.max()) < 0.97
