"""ob-train for the two-date change models, on real Banepa chips: pairs made from single-date
labels carry the right targets, are reproducible, train, and validate on held-out pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from open_buildings.commands import train as ob_train
from open_buildings.errors import ConfigError
from open_buildings.models.checkpoint import load_checkpoint
from open_buildings.training import batches, chips, loop
from open_buildings.training.change_pairs import PairSpec, change_batch, draw_pair, recolour
from open_buildings.training.change_task import score_pairs
from open_buildings.training.loop import train
from tests.training.conftest import assert_resume_is_exact

VAL = (
    "val=[{name: banepa, imagery: imagery/banepa, labels: labels/banepa_4tiles.geojson, "
    "tiles: [39eb0f33]}]"
)
CHANGE = ("model=change_unet_lite0", "chip={size: 64, empty_share: 0.0}")


def _pool(cfg) -> chips.ScenePool:
    return chips.ScenePool(batches.load_areas(cfg, cfg.train, labelled=True))


@pytest.fixture
def pool(config_factory) -> chips.ScenePool:
    return _pool(config_factory(*CHANGE))


def test_a_same_place_pair_has_no_change_and_its_own_colours(pool) -> None:
    spec = PairSpec(chips.ChipSpec(64, 0.0), same_share=1.0)
    images, targets, weights = draw_pair(
        pool, spec, np.random.default_rng(3), chips.augmenter(), recolour()
    )
    assert images.shape == (6, 64, 64) and targets.shape == weights.shape == (3, 64, 64)
    assert targets[0].sum() > 0, "the chip must hold buildings"
    np.testing.assert_array_equal(targets[0], targets[1])
    assert targets[2].sum() == 0
    assert np.abs(images[:3] - images[3:]).mean() > 0.01  # recoloured, not a copy
    np.testing.assert_array_equal(weights[2], weights[0] * weights[1])


def test_a_two_place_pair_changes_where_exactly_one_date_has_a_building(pool) -> None:
    spec = PairSpec(chips.ChipSpec(64, 0.0), same_share=0.0)
    found = False
    for seed in range(10):
        _, targets, weights = draw_pair(pool, spec, np.random.default_rng(seed), None, recolour())
        before, after = targets[0] > 0, targets[1] > 0
        np.testing.assert_array_equal(targets[2] > 0, before ^ after)
        np.testing.assert_array_equal(weights[2] > 0, (weights[0] > 0) & (weights[1] > 0))
        found |= bool((before & ~after).any() and (after & ~before).any())
    assert found, "no pair had buildings that came and went"


def test_a_steps_pairs_are_a_function_of_seed_and_step(config_factory) -> None:
    cfg = config_factory(*CHANGE)
    pool, colour = _pool(cfg), recolour()
    a = change_batch(pool, cfg, 5, chips.augmenter(), colour)
    b = change_batch(pool, cfg, 5, chips.augmenter(), colour)
    c = change_batch(pool, cfg, 6, chips.augmenter(), colour)
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.images, c.images)


def test_the_change_model_learns_a_fixed_batch_of_pairs(config_factory) -> None:
    cfg = config_factory(
        *CHANGE, "init_from=imagenet", "lr=0.005", "steps=25", "batch_size=4",
        "change={same_share: 0.25}",
    )  # fmt: skip
    batch = change_batch(_pool(cfg), cfg, 0, chips.augmenter(), recolour())
    assert batch.targets[:, 2].sum() > 0, "the batch must hold changes"
    model = loop.new_model(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    losses = [loop.train_step(model, optimizer, batch, cfg, s)["loss"] for s in range(25)]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses


def test_ob_train_trains_and_validates_a_change_model(config_factory, capsys) -> None:
    cfg = config_factory(*CHANGE, VAL, "val_every=2", "change={val_pairs: 6}")
    result = train(cfg, progress=False)
    val = result["final"]
    assert val["pairs"] == 6 and 0 <= val["f1"] <= 1 and set(val) >= {"object_f1", "building_f1"}
    assert result["operating_points"] is None  # building thresholds do not apply
    model = load_checkpoint(result["weights"])
    assert model.name == "change_unet_lite0" and model.input_spec.bands == 6
    assert [h["step"] for h in result["history"] if "val" in h] == [2, 4]


def test_the_command_prints_the_change_validation(config_factory, tmp_path, capsys) -> None:
    cfg = config_factory(*CHANGE, VAL, "steps=2", "change={val_pairs: 4}")
    (tmp_path / "c.yaml").write_text(
        "\n".join(
            f"{k}: {v!r}" if isinstance(v, str) else f"{k}: {v}"
            for k, v in {"model": cfg.model, "steps": 2}.items()
        )
    )
    argv = [str(tmp_path / "c.yaml"), "--quiet", "--out", str(tmp_path / "cli")]
    for option in (*CHANGE, VAL, "change={val_pairs: 4}", f"data_root={cfg.data_root}",
                   "train=[{name: banepa, imagery: imagery/banepa, labels: "
                   "labels/banepa_4tiles.geojson}]", "batch_size=2", "bf16=false"):  # fmt: skip
        argv += ["-o", option]
    assert ob_train.main(argv) == 0
    out = capsys.readouterr().out
    assert "validation (4 held-out pairs): change F1" in out


def test_a_change_run_resumes_exactly(config_factory, tmp_path, monkeypatch) -> None:
    assert_resume_is_exact(config_factory, tmp_path, monkeypatch, *CHANGE)


def test_mixup_is_refused_for_a_change_model(config_factory) -> None:
    cfg = config_factory(*CHANGE, "mixup={enabled: true}")
    with pytest.raises(ConfigError, match="change model.*mixup.enabled"):
        train(cfg, progress=False)


class _Fixed(torch.nn.Module):
    """A 'model' that returns given logits, to check the scoring on known answers."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits, self.w = logits, torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[: len(x)]


def test_score_pairs_is_one_for_the_truth_and_zero_for_its_opposite(pool) -> None:
    spec = PairSpec(chips.ChipSpec(64, 0.0), same_share=0.0)
    pairs = [draw_pair(pool, spec, np.random.default_rng(s), None, recolour()) for s in range(4)]
    truth = torch.from_numpy(np.stack([p[1] for p in pairs]))
    perfect = score_pairs(_Fixed(truth * 20 - 10), pairs)
    assert perfect["f1"] == perfect["object_f1"] == perfect["building_f1"] == 1.0
    assert score_pairs(_Fixed(10 - truth * 20), pairs)["f1"] == 0.0


def _dated(config_factory, tmp_path, *extra):
    """A dated area: the Banepa tiles at two dates, every third building not yet built at the
    first (the same imagery, so only the labels differ)."""
    import geopandas as gpd

    from tests.training.conftest import DATA

    labels = gpd.read_file(DATA / "labels" / "banepa_4tiles.geojson")
    labels[labels.index % 3 != 0].to_file(tmp_path / "before.geojson", driver="GeoJSON")
    area = (
        "{name: banepa_t, dates: [{date: 2021-06-01, imagery: imagery/banepa, labels: "
        "labels/banepa_4tiles.geojson}, {date: 2020-01-01, imagery: imagery/banepa, labels: "
        f"{tmp_path / 'before.geojson'}}}]}}"
    )
    return config_factory(*CHANGE, f"change={{dated: [{area}], dated_share: 1.0}}", *extra)


def test_a_dated_area_gives_real_pairs_whose_change_is_what_was_built(
    config_factory, tmp_path
) -> None:
    from open_buildings.training.change_pairs import draw_dated, load_dated

    cfg = _dated(config_factory, tmp_path)
    assert [d.date.year for d in cfg.change.dated[0].dates] == [2020, 2021]  # sorted by date
    pairs = load_dated(cfg, {})
    assert [s.tile_id for s in pairs.pool.scenes] == [s.tile_id for s in pairs.later]
    spec = PairSpec(chips.ChipSpec(64, 0.0))
    built = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        images, targets, _ = draw_dated(pairs, spec, rng, chips.augmenter() if seed % 2 else None)
        np.testing.assert_array_equal(images[:3], images[3:])  # one place, augmented alike
        before, after = targets[0] > 0, targets[1] > 0
        assert not (before & ~after).any()  # nothing was demolished
        np.testing.assert_array_equal(targets[2] > 0, after & ~before)
        built += int(targets[2].sum())
    assert built > 0


def test_ob_train_trains_on_a_dated_area(config_factory, tmp_path) -> None:
    result = train(_dated(config_factory, tmp_path, "steps=2"), progress=False)
    assert load_checkpoint(result["weights"]).name == "change_unet_lite0"


def test_a_date_given_twice_is_refused(config_factory) -> None:
    from pydantic import ValidationError

    area = (
        "{name: a, dates: [{date: 2020-01-01, imagery: imagery/banepa, labels: x.geojson}, "
        "{date: 2020-01-01, imagery: imagery/banepa, labels: y.geojson}]}"
    )
    with pytest.raises((ValidationError, ConfigError), match="lists a date twice"):
        config_factory(*CHANGE, f"change={{dated: [{area}]}}")
