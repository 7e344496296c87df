"""Conversion helpers shared by the flax ViT checkpoints (big_vision SigLIP, vmoe's V-MoE).

Both store pre-norm ViT blocks in the same flax layout and are copied into the same
:class:`~open_buildings.models.vit.ViTEncoder` (V-MoE's is a subclass), so the block conversion,
the head count, finding the encoder in a model and the final copy with its position-grid
resampling are written once, here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from open_buildings.errors import CheckpointError
from open_buildings.models.base import BuildingModel
from open_buildings.models.vit import ViTEncoder, ViTSegmenter, resample_pos_embed

logger = logging.getLogger(__name__)

_QKV = ("query", "key", "value")

#: ``get(name, shape)`` returns a block's tensor (named relative to the block), checking its shape.
BlockGetter = Callable[[str, tuple[int, ...]], torch.Tensor]


def flax_block_state(
    get: BlockGetter, attention: str, mlp: str | None, *, width: int, heads: int, mlp_dim: int
) -> dict[str, torch.Tensor]:
    """Convert one pre-norm flax ViT encoder block to :class:`~.vit.Block` state-dict names.

    The flax layout of big_vision and vit_jax (and V-MoE): ``LayerNorm_0`` before attention,
    ``LayerNorm_1`` before the MLP, a ``MultiHeadDotProductAttention`` with ``query/key/value``
    kernels ``(width, heads, head_dim)`` and ``out/kernel`` ``(heads, head_dim, width)``, and an
    MLP of ``Dense_0``/``Dense_1`` kernels ``(in, out)``.

    Args:
        get: Returns the block's tensor of a name (relative to the block) with the given shape.
        attention: The attention module's name with a trailing ``/``.
        mlp: The MLP module's name with a trailing ``/``; ``None`` leaves the MLP out (a V-MoE
            block's experts are converted by its own loader).
        width: Token width.
        heads: Attention heads (dividing ``width``).
        mlp_dim: Hidden width of the MLP.

    Returns:
        ``norm1``, ``norm2``, ``attn.qkv``, ``attn.proj`` (and ``mlp.fc1``/``mlp.fc2``) weights
        and biases, keyed relative to the block.
    """
    c, m = width, mlp_dim
    head_dim = c // heads
    sd: dict[str, torch.Tensor] = {}
    for ours, theirs in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_1")):
        sd[f"{ours}.weight"] = get(f"{theirs}/scale", (c,))
        sd[f"{ours}.bias"] = get(f"{theirs}/bias", (c,))
    a = attention
    sd["attn.qkv.weight"] = torch.cat(
        [get(f"{a}{n}/kernel", (c, heads, head_dim)).reshape(c, c).T for n in _QKV]
    )
    sd["attn.qkv.bias"] = torch.cat(
        [get(f"{a}{n}/bias", (heads, head_dim)).reshape(c) for n in _QKV]
    )
    sd["attn.proj.weight"] = get(f"{a}out/kernel", (heads, head_dim, c)).reshape(c, c).T
    sd["attn.proj.bias"] = get(f"{a}out/bias", (c,))
    if mlp is not None:
        sd["mlp.fc1.weight"] = get(f"{mlp}Dense_0/kernel", (c, m)).T
        sd["mlp.fc1.bias"] = get(f"{mlp}Dense_0/bias", (m,))
        sd["mlp.fc2.weight"] = get(f"{mlp}Dense_1/kernel", (m, c)).T
        sd["mlp.fc2.bias"] = get(f"{mlp}Dense_1/bias", (c,))
    return sd


def flax_heads(query: torch.Tensor, *, width: int, path: Path, key: str) -> int:
    """Return the attention heads of a flax attention block from its query kernel.

    Args:
        query: The ``query/kernel`` of one block, ``(width, heads, head_dim)``.
        width: Token width.
        path: The checkpoint, for messages.
        key: The kernel's name, for messages.

    Returns:
        ``heads``.

    Raises:
        CheckpointError: The kernel does not have that shape with ``heads * head_dim == width``.
    """
    if query.ndim != 3 or query.shape[0] != width or query.shape[1] * query.shape[2] != width:
        raise CheckpointError(
            f"{path}: {key} has shape {tuple(query.shape)}, expected (width {width}, heads, "
            "head_dim) with heads * head_dim == width"
        )
    return query.shape[1]


def encoder_of(
    model: nn.Module, kind: type[ViTEncoder] = ViTEncoder, loader: str = "load_siglip"
) -> tuple[ViTEncoder, str]:
    """Find the ``kind`` encoder a loader writes into, and a label for its messages.

    Args:
        model: The encoder itself, a :class:`ViTSegmenter`, or a :class:`BuildingModel` of one.
        kind: The encoder class the loader fits (:class:`ViTEncoder` or a subclass).
        loader: The loader's name, for the error message.

    Returns:
        The encoder and a label such as ``"model 'vit_siglip_tiny'"``.

    Raises:
        CheckpointError: ``model`` holds no ``kind`` encoder.
    """
    if isinstance(model, kind):
        return model, f"this {kind.__name__}"
    net = model.net if isinstance(model, BuildingModel) else model
    encoder = getattr(net, "encoder", None) if isinstance(net, ViTSegmenter) else None
    if not isinstance(encoder, kind):
        family = "vit_siglip_*" if loader == "load_siglip" else "vmoe_*"
        raise CheckpointError(
            f"{loader} needs a {kind.__name__} or a model built from a {family} entry, got "
            f"{type(model).__name__}"
            + (f" {model.name!r}" if isinstance(model, BuildingModel) else "")
        )
    label = f"model {model.name!r}" if isinstance(model, BuildingModel) else "this ViTSegmenter"
    return encoder, label


def copy_encoder_state(
    encoder: ViTEncoder, state: dict[str, torch.Tensor], *, grid: int, path: Path, what: str
) -> int:
    """Copy a converted checkpoint into a ViT encoder in place, resampling its position grid.

    The positions of the class token (if any) are kept; a patch grid other than the encoder's
    ``pretrain_size // patch`` is resampled bicubically (as the encoder itself does for other
    input sizes).

    Args:
        encoder: A :class:`ViTEncoder` (or a subclass such as the V-MoE encoder).
        state: The converted state dict, with the stored ``pos_embed``.
        grid: Side of the stored position grid.
        path: The checkpoint, for messages.
        what: The checkpoint's family, for the log (``"SigLIP"``, ``"V-MoE"``).

    Returns:
        The number of tensors written.

    Raises:
        CheckpointError: The state's names or shapes differ from the encoder's.
    """
    state = dict(state)
    target = encoder.state_dict()
    side = encoder.config.pretrain_size // encoder.config.patch
    prefix = encoder.prefix
    pos = state["pos_embed"]
    if pos.shape[1] != target["pos_embed"].shape[1]:
        logger.info(
            "resampling %s position embeddings from %dx%d to %dx%d", what, grid, grid, side, side
        )
        patch_pos = resample_pos_embed(pos[:, prefix:].float(), (side, side))
        state["pos_embed"] = torch.cat([pos[:, :prefix].float(), patch_pos], dim=1)
    _check_keys(state, target, path)
    with torch.no_grad():
        for key, value in state.items():
            target[key].copy_(value)
    return len(state)


def _check_keys(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], path: Path
) -> None:
    missing = sorted(set(target) - set(state))
    extra = sorted(set(state) - set(target))
    wrong = sorted(k for k in set(state) & set(target) if state[k].shape != target[k].shape)
    if missing or extra or wrong:
        details = _listing("missing", missing) + _listing("unexpected", extra)
        details += _listing(
            "wrong shape",
            [f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}" for k in wrong],
        )
        raise CheckpointError(f"checkpoint {path} does not fit the encoder: {'; '.join(details)}")


def _listing(what: str, items: Iterable[str]) -> list[str]:
    items = list(items)
    return [f"{what}: {', '.join(items[:6])}" + (" ..." if len(items) > 6 else "")] if items else []


def yaml_value(value: Any) -> str:
    """Write a config value the way YAML spells it (``true``, not ``True``)."""
    return str(value).lower() if isinstance(value, bool) else str(value)
