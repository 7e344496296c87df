"""Load official SigLIP and PaliGemma vision towers into a ViT encoder (:mod:`.vit`).

Two published layouts are read, and nothing else is ever executed or unpickled:

- **Hugging Face safetensors** (one file, or a sharded ``*.safetensors.index.json``): the SigLIP
  vision tower under any prefix that ends in ``embeddings.patch_embedding.weight``: bare
  (``SiglipVisionModel`` as transformers 5 saves it), ``vision_model.`` (``SiglipModel``, the
  published ``google/siglip-*`` files), ``vision_tower.vision_model.`` (published PaliGemma) and
  ``model.vision_tower.`` (PaliGemma as newer transformers saves it). ``q/k/v_proj`` are fused into
  our ``qkv``. The shapes do not say the number of attention heads; it comes from the ``heads``
  argument, else a ``config.json`` next to the weights, else the model being loaded (or
  :func:`default_heads` when only a config is asked for).
- **big_vision npz** (SigLIP and PaliGemma JAX checkpoints, as timm's ``_load_weights`` reads
  them): ``[params/]img/embedding/kernel`` (HWIO), ``img/pos_embedding``,
  ``img/Transformer/encoderblock_{i}/...`` or the layer-scanned ``encoderblock/...`` with a
  leading depth axis, ``img/Transformer/encoder_norm``. Keys may be joined by ``/`` or ``.``;
  bfloat16 arrays (stored as raw 2-byte records) are decoded.

Everything outside the vision tower (the MAP head, the text tower, PaliGemma's language model,
``logit_scale``...) is counted as unused and never loaded into memory for safetensors files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from open_buildings.errors import CheckpointError
from open_buildings.models.convert.flax_vit import copy_encoder_state, encoder_of, yaml_value
from open_buildings.models.convert.siglip_layouts import (
    SHAPE_FIELDS,
    SiglipCheckpoint,
    default_heads,
    open_tensors,
    read_hf,
    read_npz,
)
from open_buildings.models.vit import ViTConfig, ViTEncoder

__all__ = [
    "SiglipCheckpoint",
    "default_heads",
    "load_siglip",
    "read_siglip_checkpoint",
    "siglip_config_from_checkpoint",
]

# ----------------------------------------------------------------------------------------------
# Public API


def read_siglip_checkpoint(
    path: str | os.PathLike[str], *, heads: int | None = None
) -> SiglipCheckpoint:
    """Read a SigLIP/PaliGemma vision tower and convert it to :class:`ViTEncoder` names.

    Only the vision tower's tensors are read from safetensors files; the rest are listed as
    unused. The layout is recognised from the content (a zip archive is big_vision npz), not
    from the file name.

    Args:
        path: A ``.safetensors`` file, a ``.safetensors.index.json`` (shards beside it) or a
            big_vision ``.npz``.
        heads: Attention heads, for safetensors files (their shapes do not show them); ignored
            for npz, whose shapes do.

    Returns:
        The inferred config fields, the converted state dict and the unused tensor names.

    Raises:
        CheckpointError: The file is missing, unreadable, holds no vision tower, or its tensors
            are inconsistent with each other.
    """
    tensors, layout = open_tensors(Path(path))
    if layout == "big_vision":
        return read_npz(tensors, heads)
    return read_hf(tensors, heads)


def siglip_config_from_checkpoint(
    path: str | os.PathLike[str], *, heads: int | None = None, **overrides: Any
) -> ViTConfig:
    """Build the :class:`ViTConfig` a checkpoint's vision tower fits.

    Args:
        path: A checkpoint :func:`read_siglip_checkpoint` reads.
        heads: Attention heads for safetensors files; when omitted, a ``config.json`` beside the
            weights is used, else :func:`default_heads` (the published SigLIP count for the
            width). Ignored for npz (the shapes give it).
        **overrides: Other :class:`ViTConfig` fields (decoder widths, ``feature_layers``...).

    Returns:
        The config (SigLIP variant: tanh-GELU, LayerNorm eps 1e-6 unless the file says otherwise).
    """
    checkpoint = read_siglip_checkpoint(path, heads=heads)
    fields = dict(checkpoint.fields)
    fields.setdefault("heads", default_heads(fields["width"]))
    fields.update(overrides)
    return ViTConfig(**fields)


def _fitting_entries(fields: dict[str, Any]) -> list[str]:
    from open_buildings.models.registry import get_entry, list_models

    fits = []
    for name in list_models():
        config = get_entry(name).default_config
        if not name.startswith("vit_siglip_") or not isinstance(config, ViTConfig):
            continue
        if all(getattr(config, k) == fields[k] for k in SHAPE_FIELDS if k in fields):
            fits.append(name)
    return fits


def _mismatch_error(
    checkpoint: SiglipCheckpoint, encoder: ViTEncoder, label: str, path: Path
) -> CheckpointError | None:
    config = encoder.config
    lines = []
    for key in SHAPE_FIELDS:
        if key in checkpoint.fields and checkpoint.fields[key] != getattr(config, key):
            lines.append(
                f"{key} {checkpoint.fields[key]} (from {checkpoint.evidence[key]}) vs "
                f"{getattr(config, key)} in the model"
            )
    bands = encoder.patch_embed.weight.shape[1]
    if checkpoint.in_chans != bands:
        lines.append(
            f"bands {checkpoint.in_chans} (patch embedding) vs {bands} in the model; SigLIP "
            "towers take RGB"
        )
    if not lines:
        return None
    known = {k: checkpoint.fields[k] for k in SHAPE_FIELDS if k in checkpoint.fields}
    fits = _fitting_entries(known)
    overrides = dict(known, pretrain_size=checkpoint.fields["pretrain_size"])
    guessed = "heads" not in overrides
    overrides.setdefault("heads", default_heads(overrides["width"]))
    if not overrides["class_token"]:
        del overrides["class_token"]
    if overrides.get("ln_eps") == ViTConfig.ln_eps:
        del overrides["ln_eps"]
    text = ", ".join(f"{k}: {yaml_value(v)}" for k, v in overrides.items())
    hint = f"use model: {fits[0]}, or " if fits else "use "
    note = (
        " (heads guessed from the width: check num_attention_heads in the model's config.json)"
        if guessed
        else ""
    )
    return CheckpointError(
        f"checkpoint {path} does not fit {label}: " + "; ".join(lines) + f". To load it, {hint}"
        f"model_overrides: {{{text}}}{note}"
    )


def load_siglip(
    model_or_encoder: nn.Module, path: str | os.PathLike[str], *, heads: int | None = None
) -> dict[str, int]:
    """Copy a SigLIP/PaliGemma vision tower into a ViT encoder, in place.

    The decoder of a :class:`BuildingModel` is left as it is. A position grid other than the
    model's ``pretrain_size // patch`` is resampled bicubically (as the encoder itself does for
    other input sizes).

    Args:
        model_or_encoder: A :class:`BuildingModel` built from a ``vit_siglip_*`` entry, its
            :class:`ViTSegmenter`, or a bare :class:`ViTEncoder`.
        path: A checkpoint :func:`read_siglip_checkpoint` reads.
        heads: Attention heads of a safetensors checkpoint; when omitted, a ``config.json``
            beside it decides, else the model's own count is assumed.

    Returns:
        ``{"loaded": encoder tensors written, "unused": source tensors left out}``.

    Raises:
        CheckpointError: The file is unreadable or holds no vision tower, or its width, depth,
            MLP width, heads, patch or bands differ from the model's (the message gives the
            registry entry or ``model_overrides`` that fit).
    """
    path = Path(path)
    encoder, label = encoder_of(model_or_encoder)
    checkpoint = read_siglip_checkpoint(path, heads=heads)
    error = _mismatch_error(checkpoint, encoder, label, path)
    if error is not None:
        raise error
    grid = checkpoint.fields["pretrain_size"] // checkpoint.fields["patch"]
    loaded = copy_encoder_state(encoder, checkpoint.state_dict, grid=grid, path=path, what="SigLIP")
    return {"loaded": loaded, "unused": len(checkpoint.unused)}
