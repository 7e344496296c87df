"""Damaged copies of the real test imagery (truncated files, garbled bytes, made at test time),
and the tiny checkpoint the ob-infer runs use.

Every damage is seeded, so a failure names an offset that reproduces it. (A module of its own,
not a conftest.py: tests/pipelines imports names from its conftest, and two conftest modules
would clash.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1] / "data" / "imagery"
BANEPA = DATA / "banepa"  # 4 georeferenced .tif files holding JPEG bytes, .aux.xml sidecars
NAIROBI = DATA / "nairobi"  # 4 z19 slippy tiles, JPEG bytes in .png names


def copy_folder(src: Path, dst: Path) -> Path:
    """Copy a fixture folder to ``dst`` (created) and return it."""
    shutil.copytree(src, dst)
    return dst


def truncate(path: Path, at: int) -> None:
    """Cut ``path`` to its first ``at`` bytes."""
    path.write_bytes(path.read_bytes()[:at])


def garble(path: Path, count: int, seed: int, start: int = 0) -> None:
    """Overwrite ``count`` bytes of ``path`` (after ``start``) with seeded random values."""
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    for k in rng.integers(start, len(data), size=count):
        data[k] = int(rng.integers(256))
    path.write_bytes(bytes(data))


def offsets(path: Path, count: int, seed: int) -> list[int]:
    """Seeded truncation offsets inside ``path`` (never 0, never its full size)."""
    size = path.stat().st_size
    rng = np.random.default_rng(seed)
    return sorted({int(v) for v in rng.integers(1, size - 1, size=count)})


def as_real_png(src: Path, dst: Path) -> Path:
    """Re-encode a tile's real pixels as an actual PNG (the fixtures hold JPEG bytes)."""
    from PIL import Image

    with Image.open(src) as image:
        image.convert("RGB").save(dst, format="PNG")
    return dst


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained ``unet_tiny`` checkpoint (fixed seed): the plumbing, not the quality."""
    import torch

    from open_buildings.models.checkpoint import save_checkpoint
    from open_buildings.models.registry import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "unet_tiny.safetensors"
    save_checkpoint(build_model("unet_tiny"), path)
    return path
