"""Initialising a model's backbone from an official checkpoint in a local file.

Each backbone family registers one loader here (:func:`register_loader`); :func:`load_backbone`
picks the loader by the model's registry name, so ``ob-train``'s ``init_from`` works for every
family without knowing any checkpoint layout. Nothing is downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from open_buildings.errors import CheckpointError
from open_buildings.models.base import BuildingModel

__all__ = ["BackboneLoader", "load_backbone", "register_loader"]

#: ``loader(model, path) -> report`` copies the checkpoint's backbone tensors into ``model`` in
#: place and returns counts such as ``{"loaded": n, "unused": m}``.
BackboneLoader = Callable[[BuildingModel, Path], dict[str, int]]

_LOADERS: dict[str, BackboneLoader] = {}


def register_loader(prefix: str, loader: BackboneLoader) -> None:
    """Register the loader for every model whose registry name starts with ``prefix``.

    Args:
        prefix: Registry-name prefix, e.g. ``"vit_siglip_"``.
        loader: The loader.
    """
    if prefix in _LOADERS:
        raise CheckpointError(f"a backbone loader for {prefix!r} is already registered")
    _LOADERS[prefix] = loader


def _ensure_builtin_loaders() -> None:
    # Importing the families registers their loaders (as the registry does for models).
    from open_buildings.models import registry

    registry.list_models()
    for module in ("vit_convert", "owlvit_convert", "vmoe", "vmoe_convert"):
        try:
            __import__(f"open_buildings.models.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"open_buildings.models.{module}":
                raise


def load_backbone(model: BuildingModel, path: str | os.PathLike[str]) -> dict[str, int]:
    """Initialise ``model``'s backbone from the official checkpoint at ``path``.

    Args:
        model: A registered model (its name picks the loader).
        path: A local checkpoint file in a layout the family's loader reads.

    Returns:
        The loader's report (tensors loaded, and source tensors left unused).

    Raises:
        CheckpointError: No loader fits this model, the file is missing, or it does not fit.
    """
    _ensure_builtin_loaders()
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"backbone checkpoint {path} does not exist; pass a local file")
    for prefix in sorted(_LOADERS, key=len, reverse=True):
        if model.name.startswith(prefix):
            return _LOADERS[prefix](model, path)
    known = ", ".join(f"{p}*" for p in sorted(_LOADERS)) or "none"
    raise CheckpointError(
        f"no official-checkpoint loader fits model {model.name!r} (loaders exist for: {known}); "
        "use init: imagenet for unet_efficientnet_lite0, or train from random weights"
    )
