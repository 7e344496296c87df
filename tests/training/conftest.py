"""Shared fixtures: a training config over the real Banepa chips kept in tests/data."""

from pathlib import Path

import pytest

from open_buildings.config import load_config
from open_buildings.training.config import TrainConfig

DATA = Path(__file__).resolve().parents[1] / "data"


def make_config(tmp_path: Path, *overrides: str) -> TrainConfig:
    """A tiny, fast run on the four real Banepa tiles (OAM imagery + OSM labels)."""
    base = [
        "model=unet_tiny",
        f"data_root={DATA}",
        "train=[{name: banepa, imagery: imagery/banepa, labels: labels/banepa_4tiles.geojson}]",
        "chip={size: 96, empty_share: 0.0}",
        "batch_size=2",
        "steps=4",
        "warmup_steps=0",
        "lr=0.01",
        "bf16=false",
        "checkpoint_every=2",
        "val_every=1000",
        f"out={tmp_path / 'run'}",
    ]
    return load_config(TrainConfig, None, [*base, *overrides])


class CrashError(Exception):
    """Raised by :func:`assert_resume_is_exact`'s run right after its checkpoint at step 2."""


def assert_resume_is_exact(make_config, tmp_path: Path, monkeypatch, *options: str) -> None:
    """Train 4 steps straight, and again killed after the checkpoint at step 2 and resumed:
    the weights and the loss history must be the same."""
    import torch

    from open_buildings.models.checkpoint import load_checkpoint
    from open_buildings.training import loop

    straight = loop.train(make_config(f"out={tmp_path / 'a'}", *options), progress=False)
    real_save = loop.save_state

    def save_then_crash(folder, model, optimizer, step, history, **kwargs):
        real_save(folder, model, optimizer, step, history, **kwargs)
        if step == 2:
            raise CrashError

    monkeypatch.setattr(loop, "save_state", save_then_crash)
    with pytest.raises(CrashError):
        loop.train(make_config(f"out={tmp_path / 'b'}", *options), progress=False)
    monkeypatch.setattr(loop, "save_state", real_save)
    resumed = loop.train(
        make_config(f"out={tmp_path / 'b'}", *options), resume=True, progress=False
    )
    a = load_checkpoint(straight["weights"]).state_dict()
    b = load_checkpoint(resumed["weights"]).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in straight["history"]] == [h["loss"] for h in resumed["history"]]


@pytest.fixture
def config_factory(tmp_path: Path):
    """Return ``make_config`` bound to this test's tmp_path."""
    return lambda *overrides: make_config(tmp_path, *overrides)
