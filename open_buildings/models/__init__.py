"""Segmentation models: the registry, the backbone families, heads, losses and checkpoints.

Torch only: no file formats other than safetensors (and the official checkpoint layouts read by
:mod:`.convert`), no Beam, no geospatial code. Importing the package imports nothing heavy:
``open_buildings.models.heads`` works without torch, and the names below load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

#: The built-in families; importing one registers its models.
FAMILIES = ("unet", "vit", "vmoe", "owlvit", "change_unet")

_EXPORTS = {
    "CHANNELS": "heads",
    "Targets": "heads",
    "decode": "heads",
    "make_targets": "heads",
    "BuildingModel": "base",
    "InputSpec": "base",
    "file_sha256": "checkpoint",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "ModelEntry": "registry",
    "build_model": "registry",
    "describe_models": "registry",
    "get_entry": "registry",
    "list_models": "registry",
    "load_pretrained": "registry",
    "register": "registry",
}

__all__ = [*sorted(_EXPORTS), "FAMILIES", "register_builtin_families"]


def register_builtin_families() -> None:
    """Import the built-in model families, each of which registers its models (idempotent)."""
    for family in FAMILIES:
        importlib.import_module(f"{__name__}.{family}")


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
