"""Ending a run early on real Banepa chips: the time budget, patience, the best weights kept."""

from pathlib import Path

import pytest
from safetensors.torch import load_file

from open_buildings.errors import ConfigError
from open_buildings.models.checkpoint import read_operating_points
from open_buildings.training import loop, stopping
from open_buildings.training.loop import lr_at, train

VAL = (
    "val=[{name: banepa, imagery: imagery/banepa, labels: labels/banepa_4tiles.geojson, "
    "tiles: [39eb0f33]}]"
)


def test_constant_schedule_keeps_the_rate_after_warm_up(config_factory) -> None:
    cfg = config_factory("lr_schedule=constant", "warmup_steps=4", "steps=100", "lr=0.01")
    assert lr_at(cfg, 0) == pytest.approx(0.0025)
    assert [lr_at(cfg, s) for s in (4, 50, 99)] == [0.01] * 3
    cosine = config_factory("warmup_steps=4", "steps=100", "lr=0.01")
    assert lr_at(cosine, 99) < 0.001


def test_the_time_budget_ends_the_run_and_it_is_validated_then(config_factory) -> None:
    cfg = config_factory("steps=1000", "stopping={max_minutes: 0.0001}", VAL, "val_every=1000")
    result = train(cfg, progress=False)
    assert len(result["history"]) == 1 and result["stopped"].startswith("time budget")
    assert "val" in result["history"][-1]  # validated at the stop, though val_every is 1000
    assert read_operating_points(result["weights"])["measured_on"] == "banepa"
    # the checkpoint is saved at the stop too, so the run can be resumed from there
    assert (Path(cfg.out) / "checkpoint" / "state.json").is_file()


class _Trainer:
    """What the hooks read and set of a Trainer, around a real tiny model."""

    def __init__(self, model) -> None:
        self.result, self.history, self.best, self.stop = model, [], None, None


def test_patience_stops_and_the_best_weights_are_the_best_validation(
    config_factory, tmp_path: Path
) -> None:
    model = loop.new_model(config_factory())
    trainer = _Trainer(model)
    hook = stopping.best_hook(tmp_path, patience=3)
    scores = [0.40, 0.55, 0.50, 0.55, 0.52]  # equal is not better: step 2 stays the best
    for step, score in enumerate(scores):
        record = {"step": step + 1, "val": {"best_f1": score}}
        if step == 1:  # the weights at the best validation differ from every other step's
            for p in model.parameters():
                p.data.add_(1.0)
            expected = {k: v.clone() for k, v in model.state_dict().items()}
        hook(trainer, step, record)
        trainer.history.append(record)
        if step < 4:
            assert trainer.stop is None, f"stopped early at step {step + 1}"
    assert trainer.best.step == 2 and trainer.best.score == 0.55
    assert trainer.stop == "no better best_f1 in 3 validations (best 0.550 at step 2)"
    saved = load_file(str(tmp_path / stopping.BEST_WEIGHTS))
    assert all((saved[k] == v).all() for k, v in expected.items())
    # a resumed run finds the same best among its earlier steps
    again = stopping.best_from_history(trainer.history, tmp_path)
    assert (again.step, again.score) == (2, 0.55)
    assert stopping.best_from_history(trainer.history, tmp_path / "nowhere") is None


def _scripted(monkeypatch, scores: list[float]) -> None:
    """Make the validations score ``scores`` in turn (step 0's first)."""
    values = iter(scores)
    real = loop.metrics
    monkeypatch.setattr(loop, "metrics", lambda scored: {**real(scored), "best_f1": next(values)})


def test_keep_best_saves_the_best_validated_weights(config_factory, monkeypatch) -> None:
    # Step 0 (the starting weights) scores 0.1, then 0.6, 0.3, 0.2: step 2's weights must be
    # the ones saved, not step 6's, and calibrated anew.
    _scripted(monkeypatch, [0.1, 0.6, 0.3, 0.2])
    cfg = config_factory("steps=6", VAL, "val_every=2", "lr=0.05", "stopping={keep_best: true}")
    result = train(cfg, progress=False)
    vals = [(h["step"], h["val"]["best_f1"]) for h in result["history"] if "val" in h]
    assert vals == [(0, 0.1), (2, 0.6), (4, 0.3), (6, 0.2)]
    assert result["best_step"] == 2 and result["final"]["best_f1"] == 0.6
    kept = load_file(result["weights"])
    best_file = load_file(str(Path(cfg.out) / stopping.BEST_WEIGHTS))
    last = load_file(str(Path(cfg.out) / "checkpoint" / "model.safetensors"))
    assert all((kept[k] == best_file[k]).all() for k in kept)
    assert any((kept[k] != last[k]).any() for k in kept), "the last step's weights were kept"
    assert read_operating_points(result["weights"])["measured_on"] == "banepa"
    assert (Path(cfg.out) / "training_curve.png").stat().st_size > 1000


def test_a_run_that_never_beats_its_start_gives_the_start_back(config_factory, monkeypatch):
    first = train(
        config_factory("steps=1", "out=" + str(config_factory().out) + "0"), progress=False
    )
    _scripted(monkeypatch, [0.5, 0.4, 0.3])
    cfg = config_factory(
        f"start_from={first['weights']}", "steps=4", VAL, "val_every=2", "lr=0.05",
        "stopping={keep_best: true}",
    )  # fmt: skip
    result = train(cfg, progress=False)
    assert result["best_step"] == 0
    kept, start = load_file(result["weights"]), load_file(first["weights"])
    assert all((kept[k] == start[k]).all() for k in start)


def test_stopping_on_validation_needs_validation_areas(config_factory) -> None:
    with pytest.raises(ConfigError, match="need 'val' areas"):
        train(config_factory("stopping={patience: 2}"), progress=False)


def test_start_from_loads_the_whole_checkpoint_and_checks_the_family(config_factory) -> None:
    first = config_factory("steps=1")
    weights = train(first, progress=False)["weights"]
    cfg = config_factory(f"start_from={weights}", "out=" + str(Path(first.out).parent / "b"))
    model = loop.new_model(cfg)
    saved = load_file(weights)
    assert all((model.state_dict()[k] == v).all() for k, v in saved.items())
    other = config_factory(f"start_from={weights}", "model=unet_efficientnet_lite0")
    with pytest.raises(ConfigError, match="holds a 'unet_tiny' model"):
        loop.new_model(other)
    with pytest.raises(ConfigError, match="not both"):
        config_factory(f"start_from={weights}", "init_from=imagenet")
