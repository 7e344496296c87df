"""Segmentation models: the registry, U-Net backbones, instance heads, losses and checkpoints.

Torch only: no file formats other than safetensors, no Beam, no geospatial code.
"""

from open_buildings.models.base import BuildingModel, InputSpec
from open_buildings.models.checkpoint import file_sha256, load_checkpoint, save_checkpoint
from open_buildings.models.heads import CHANNELS, Targets, decode, make_targets
from open_buildings.models.registry import (
    ModelEntry,
    build_model,
    describe_models,
    get_entry,
    list_models,
    register,
)

__all__ = [
    "CHANNELS",
    "BuildingModel",
    "InputSpec",
    "ModelEntry",
    "Targets",
    "build_model",
    "decode",
    "describe_models",
    "file_sha256",
    "get_entry",
    "list_models",
    "load_checkpoint",
    "make_targets",
    "register",
    "save_checkpoint",
]
