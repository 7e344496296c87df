"""ob-train on real Banepa chips: the loss falls, resume is exact, self-training runs."""

from pathlib import Path

import numpy as np
import pytest
import torch

from open_buildings.commands import train as ob_train
from open_buildings.config import load_config
from open_buildings.errors import ConfigError
from open_buildings.models.checkpoint import load_checkpoint, save_checkpoint
from open_buildings.models.registry import build_model
from open_buildings.training import loop
from open_buildings.training.config import TrainConfig
from open_buildings.training.loop import train

DATA = Path(__file__).resolve().parents[1] / "data"


def test_loss_falls_on_a_real_chip(config_factory) -> None:
    # The same two real chips every step (seed fixed, one scene): the model must fit them.
    cfg = config_factory("steps=40", "chip={size: 64, empty_share: 0.0}", "lr=0.02")
    steps = []
    for record in _train_fixed_batch(cfg):
        steps.append(record)
    first, last = np.mean(steps[:5]), np.mean(steps[-5:])
    assert last < 0.6 * first, f"loss went from {first:.3f} to {last:.3f}"


def _train_fixed_batch(cfg: TrainConfig):
    """Train on one fixed real batch (step 0's chips) and yield each step's loss."""
    from open_buildings.models.losses import segmentation_loss
    from open_buildings.training import chips, loop

    pool = chips.ScenePool(loop.load_areas(cfg, cfg.train, labelled=True))
    batch = loop.labelled_batch(pool, cfg, 0, chips.augmenter())
    assert batch.targets[:, 0].sum() > 0, "the chips must hold buildings"
    model = loop.new_model(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    model.train()
    for _ in range(cfg.steps):
        loss = segmentation_loss(model(batch.images), batch.targets, batch.weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        yield loss.item()


class CrashError(Exception):
    pass


def test_resume_continues_exactly(config_factory, tmp_path: Path, monkeypatch) -> None:
    straight = train(config_factory(f"out={tmp_path / 'a'}"), progress=False)

    # CrashError right after the checkpoint at step 2 of 4, then resume from it.
    real_save = loop.save_state

    def save_then_crash(folder, model, optimizer, step, history):
        real_save(folder, model, optimizer, step, history)
        if step == 2:
            raise CrashError

    monkeypatch.setattr(loop, "save_state", save_then_crash)
    with pytest.raises(CrashError):
        train(config_factory(f"out={tmp_path / 'b'}"), progress=False)
    monkeypatch.setattr(loop, "save_state", real_save)
    resumed = train(config_factory(f"out={tmp_path / 'b'}"), resume=True, progress=False)
    a = load_checkpoint(straight["weights"]).state_dict()
    b = load_checkpoint(resumed["weights"]).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in straight["history"]] == [h["loss"] for h in resumed["history"]]


def test_a_second_run_into_the_same_folder_is_refused(config_factory) -> None:
    cfg = config_factory("steps=2")
    train(cfg, progress=False)
    with pytest.raises(ConfigError, match="--resume"):
        train(cfg, progress=False)


def test_mixup_and_self_training_run_and_record_kl(config_factory, tmp_path: Path) -> None:
    teacher = tmp_path / "teacher.safetensors"
    save_checkpoint(build_model("unet_tiny"), teacher)
    cfg = config_factory(
        "steps=2",
        "mixup={enabled: true, alpha: 0.4, prob: 1.0}",
        f"self_training={{enabled: true, teacher: {teacher}, ratio: 0.5, temperature: 2.0, "
        "unlabelled: [{name: vegas, imagery: imagery/spacenet2_vegas_400px_uint16.tif}]}",
        "val=[{name: banepa, imagery: imagery/banepa, labels: labels/banepa_4tiles.geojson}]",
        "val_every=2",
    )
    result = train(cfg, progress=False)
    assert all(h["mixup"] for h in result["history"])
    assert all(h["kl"] > 0 for h in result["history"])
    val = result["final"]
    assert set(val) >= {"ap", "ap50", "f1", "precision", "recall"} and val["n_truth"] > 0
    assert (Path(cfg.out) / "training_curve.png").stat().st_size > 1000


def test_unknown_config_key_is_an_error() -> None:
    with pytest.raises(ConfigError, match="stepz"):
        load_config(TrainConfig, None, ["train=[]", "stepz=3"])


def test_ob_train_command(tmp_path: Path, capsys) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "model: unet_tiny\n"
        f"data_root: {DATA}\n"
        "train: [{name: banepa, imagery: imagery/banepa, labels: labels/banepa_4tiles.geojson}]\n"
        "chip: {size: 64}\nbatch_size: 1\nsteps: 1\nbf16: false\n"
    )
    assert ob_train.main([str(config), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "trained unet_tiny for 1 steps" in out
    assert (tmp_path / "r" / "weights.safetensors.sha256").exists()
    assert ob_train.main([str(config), "-o", "bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err
