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


@pytest.fixture
def config_factory(tmp_path: Path):
    """Return ``make_config`` bound to this test's tmp_path."""
    return lambda *overrides: make_config(tmp_path, *overrides)
