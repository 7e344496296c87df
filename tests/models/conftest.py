"""Shared fixtures for the model tests."""

from __future__ import annotations

import pytest
import torch

from open_buildings.models import BuildingModel, build_model


@pytest.fixture(scope="session")
def built_models() -> dict[str, BuildingModel]:
    """Models built once per session, seeded, keyed by registry name (built lazily)."""
    cache: dict[str, BuildingModel] = {}

    class _Lazy(dict):
        def __missing__(self, name: str) -> BuildingModel:
            torch.manual_seed(0)
            model = build_model(name)
            self[name] = model
            return model

    return _Lazy(cache)
