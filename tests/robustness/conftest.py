"""Shared fixture for the robustness tests: a tiny real checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest


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
