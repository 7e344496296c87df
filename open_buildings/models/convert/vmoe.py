"""Load official V-MoE checkpoints (google-research/vmoe) into a V-MoE encoder (:mod:`.vmoe`).

Two layouts are read, and nothing in them is ever executed or unpickled:

- **vmoe's own partitioned checkpoint**: ``{prefix}.index`` (pass this file, or the prefix) and
  its shards ``{prefix}.data-{i:05d}-of-{n:05d}`` beside it, as
  ``vmoe.checkpoints.partitioned.save_checkpoint`` writes them: msgpack files in flax's
  serialization format, read by :mod:`.vmoe_shards` over a memory map (only the parameters'
  slices are decoded; JAX and flax are not needed).
- **npz export** of the flattened parameter tree, keys joined by ``/`` (or ``.``), with an
  optional ``params/`` or ``target/`` prefix. From a JAX environment::

      np.savez(out, **flax.traverse_util.flatten_dict(params, sep='/'))

  bfloat16 arrays (which numpy stores as raw 2-byte records) are decoded.

The parameter names are vmoe's ``VisionTransformerMoe`` (``vmoe/nn/vit_moe.py``):
``embedding/{kernel,bias}`` (HWIO patch kernel), ``cls`` (classifier ``token``),
``Encoder/posembed_input/pos_embedding`` (class token included),
``Encoder/encoderblock_{i}/{LayerNorm_0,SelfAttention,LayerNorm_1}`` and either the dense
``Mlp/Dense_{0,1}`` or the sparse ``Moe/Mlp/Dense_{0,1}`` with a leading experts axis and the
bias-free router ``Moe/Router/dense/kernel`` ``(width, E)``, then ``Encoder/encoder_norm``.
``pre_logits`` and ``head`` (the classifier) are counted as unused. The dense parts convert as
the big_vision ViT does (:func:`~.flax_vit.flax_block_state`).

The config is inferred from the shapes: width, depth, MLP width, heads, patch, the position
grid, the class token, the number of experts and which blocks are sparse (vmoe's ``Every 2`` is
our ``every_other``, ``Last n`` our ``last_n``). The number of experts each token is routed to
(``k``) and the capacity factors are routing settings, not weights: the published models use
``k = 2`` (the ``K=`` of their names), our default. vmoe combines the experts' outputs with the
softmax gates of the selected experts, not renormalised, as :class:`~.moe.MoEMlp` does.
"""

from __future__ import annotations

import functools
import math
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from open_buildings.errors import CheckpointError
from open_buildings.models.convert.files import NamedTensors, layer_indices, open_npz
from open_buildings.models.convert.flax_vit import (
    copy_encoder_state,
    encoder_of,
    flax_block_state,
    flax_heads,
    yaml_value,
)
from open_buildings.models.convert.vmoe_shards import (
    REMEDY,
    WHAT,
    open_partitioned,
)
from open_buildings.models.vmoe import PLACEMENTS, VMoEConfig, VMoEEncoder, moe_blocks

__all__ = [
    "VMoECheckpoint",
    "load_vmoe",
    "read_vmoe_checkpoint",
    "vmoe_config_from_checkpoint",
]

ANCHOR = "embedding/kernel"
#: A name the encoder has beside :data:`ANCHOR`; it tells V-MoE/vit_jax trees from others.
ENCODER_ANCHOR = "Encoder/encoder_norm/scale"
#: Where the parameters sit in a tree that holds more (train state, old flax optimizers).
PARAM_PREFIXES = ("", "params/", "target/", "optimizer/target/")
#: Fields compared between a checkpoint and the model it is loaded into, in message order.
FIT_FIELDS = (
    "width",
    "depth",
    "mlp_dim",
    "heads",
    "patch",
    "class_token",
    "num_experts",
    "act",
    "pre_norm",
    "ln_eps",
)
_VMOE_FIXED = "vmoe's ViT (vit_jax MlpBlock: flax nn.gelu, tanh form; flax LayerNorm eps 1e-6)"
_DATA_SHARD = re.compile(r"\.data-\d+-of-\d+$")


class VMoECheckpoint(NamedTuple):
    """A V-MoE encoder read from a file, in :class:`~.vmoe.VMoEEncoder` names.

    Attributes:
        fields: :class:`~.vmoe.VMoEConfig` fields the file determines (``width``, ``depth``,
            ``mlp_dim``, ``heads``, ``patch``, ``pretrain_size``, ``class_token``,
            ``num_experts``, ``moe_placement`` and ``moe_last_n``, and the fixed ``act``,
            ``pre_norm`` and ``ln_eps`` of vmoe's ViT).
        moe_blocks: 0-based indices of the blocks whose MLP is a mixture of experts.
        state_dict: Encoder state-dict keys to tensors (position grid as stored).
        unused: Source array names that were not converted (classifier, optimizer state...).
        layout: ``"vmoe"`` (partitioned ``.index`` + ``.data-*``) or ``"npz"``.
        evidence: For each field, the source tensor (and shape) it was read from.
        in_chans: Input bands of the patch embedding.
    """

    fields: dict[str, Any]
    moe_blocks: tuple[int, ...]
    state_dict: dict[str, torch.Tensor]
    unused: list[str]
    layout: str
    evidence: dict[str, str]
    in_chans: int


def _open(path: Path) -> tuple[NamedTensors, str]:
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint {path} is a folder; pass the file in it: the checkpoint's .index file "
            "(its .data-* shards beside it) or an .npz export"
        )
    if not path.is_file() and Path(f"{path}.index").is_file():
        path = Path(f"{path}.index")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a local file")
    if _DATA_SHARD.search(path.name):
        index = Path(_DATA_SHARD.sub(".index", str(path)))
        raise CheckpointError(
            f"{path} is one shard of a V-MoE checkpoint; pass its index, {index.name}, instead "
            "(the shards stay beside it)"
        )
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic.startswith(b"PK"):
        return open_npz(path, what=WHAT, as_what="an .npz export", remedy=REMEDY), "npz"
    if path.name.endswith(".index"):
        return open_partitioned(path), "vmoe"
    raise CheckpointError(
        f"{path} is neither a V-MoE checkpoint index (*.index) nor an .npz of parameters; pass "
        "one of those"
    )


# ----------------------------------------------------------------------------------------------
# The parameter tree


def _find_prefix(arrays: NamedTensors) -> str:
    prefixes = sorted(
        name[: -len(ANCHOR)]
        for name in arrays.names
        if (name == ANCHOR or name.endswith("/" + ANCHOR))
        and arrays.has(name[: -len(ANCHOR)] + ENCODER_ANCHOR)
    )
    if not prefixes:
        sample = ", ".join(sorted(arrays.names)[:5]) or "none"
        hint = (
            " It looks like a big_vision ViT (SigLIP): load it into a vit_siglip_* model."
            if any("Transformer/encoderblock" in n for n in arrays.names)
            else ""
        )
        raise CheckpointError(
            f"{arrays.path} holds no V-MoE: no '{ANCHOR}' beside '{ENCODER_ANCHOR}' (first "
            f"names: {sample}).{hint} Pass a google-research/vmoe checkpoint or its .npz export"
        )
    if len(prefixes) > 1:
        preferred = [p for p in PARAM_PREFIXES if p in prefixes]
        if not preferred:
            raise CheckpointError(
                f"{arrays.path} holds several V-MoE trees ({', '.join(prefixes)}); export the "
                "parameters to load into their own .npz"
            )
        return preferred[0]
    return prefixes[0]


def _read(arrays: NamedTensors, layout: str) -> VMoECheckpoint:
    path = arrays.path
    p = _find_prefix(arrays)
    kernel_key = p + ANCHOR
    kernel = arrays.take(kernel_key)
    if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1]:
        raise CheckpointError(
            f"{path}: {kernel_key} has shape {tuple(kernel.shape)}, not a square HWIO patch kernel"
        )
    patch, in_chans, width = kernel.shape[0], kernel.shape[2], kernel.shape[3]
    c = width
    sd: dict[str, torch.Tensor] = {
        "patch_embed.weight": kernel.permute(3, 2, 0, 1),
        "patch_embed.bias": arrays.take(f"{p}embedding/bias", (c,)),
    }
    class_token = arrays.has(f"{p}cls")
    if class_token:
        sd["cls_token"] = arrays.take(f"{p}cls", (1, 1, c))
    pos_key = f"{p}Encoder/posembed_input/pos_embedding"
    if not arrays.has(pos_key):
        raise CheckpointError(
            f"{path}: {pos_key!r} is missing; only V-MoE models with learned position "
            "embeddings (position_emb 'learned', vmoe's default) are supported"
        )
    pos = arrays.take(pos_key)
    pos = pos.unsqueeze(0) if pos.ndim == 2 else pos
    prefix_tokens = int(class_token)
    if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != c or pos.shape[1] <= prefix_tokens:
        raise CheckpointError(
            f"{path}: {pos_key} has shape {tuple(pos.shape)}, expected (1, tokens, {c})"
        )
    grid = math.isqrt(pos.shape[1] - prefix_tokens)
    if grid * grid != pos.shape[1] - prefix_tokens:
        raise CheckpointError(
            f"{path}: {pos_key} holds {pos.shape[1]} positions, not a square grid"
            + (" plus the class token" if class_token else "")
        )
    sd["pos_embed"] = pos

    pattern = re.escape(f"{p}Encoder/encoderblock_") + r"(\d+)/"
    blocks = layer_indices(arrays, pattern)
    depth = len(blocks)
    base = [f"{p}Encoder/encoderblock_{i}/" for i in blocks]
    sparse = tuple(i for i in blocks if arrays.has(f"{base[i]}Moe/Router/dense/kernel"))
    query_key = f"{base[0]}SelfAttention/query/kernel"
    query = arrays.take(query_key)
    heads = flax_heads(query, width=c, path=path, key=query_key)
    if not sparse:
        raise CheckpointError(
            f"{path} has no mixture-of-experts layer (no 'Moe/Router/dense/kernel' in any "
            "block): it is a dense ViT, not a V-MoE"
        )
    router_key = f"{base[sparse[0]]}Moe/Router/dense/kernel"
    router = arrays.take(router_key)
    if router.ndim != 2 or router.shape[0] != c:
        raise CheckpointError(
            f"{path}: {router_key} has shape {tuple(router.shape)}, expected (width {c}, experts)"
        )
    num_experts = router.shape[1]
    fc1_key = f"{base[sparse[0]]}Moe/Mlp/Dense_0/kernel"
    fc1 = arrays.take(fc1_key)
    if fc1.ndim != 3 or fc1.shape[:2] != (num_experts, c):
        raise CheckpointError(
            f"{path}: {fc1_key} has shape {tuple(fc1.shape)}, expected ({num_experts} experts, "
            f"width {c}, mlp_dim)"
        )
    m = mlp_dim = fc1.shape[2]
    e = num_experts

    for i in blocks:
        get = functools.partial(_block_tensor, arrays, base[i])
        dense = i not in sparse
        block = flax_block_state(
            get, "SelfAttention/", "Mlp/" if dense else None, width=c, heads=heads, mlp_dim=m
        )
        if not dense:
            if arrays.has(f"{base[i]}Moe/Router/dense/bias"):
                raise CheckpointError(
                    f"{path}: block {i}'s router has a bias; V-MoE routers have none, so this is "
                    "not a model this loader can reproduce"
                )
            block["mlp.router"] = get("Moe/Router/dense/kernel", (c, e)).T
            block["mlp.w1"] = get("Moe/Mlp/Dense_0/kernel", (e, c, m))
            block["mlp.b1"] = get("Moe/Mlp/Dense_0/bias", (e, m)).unsqueeze(1)
            block["mlp.w2"] = get("Moe/Mlp/Dense_1/kernel", (e, m, c))
            block["mlp.b2"] = get("Moe/Mlp/Dense_1/bias", (e, c)).unsqueeze(1)
        sd.update({f"blocks.{i}.{key}": value for key, value in block.items()})
    sd["norm.weight"] = arrays.take(f"{p}Encoder/encoder_norm/scale", (c,))
    sd["norm.bias"] = arrays.take(f"{p}Encoder/encoder_norm/bias", (c,))
    sd = {k: v.contiguous() for k, v in sd.items()}

    placement = _placement(path, depth, sparse)
    shape = tuple(kernel.shape)
    fields: dict[str, Any] = {
        "width": width,
        "depth": depth,
        "mlp_dim": mlp_dim,
        "heads": heads,
        "patch": patch,
        "pretrain_size": grid * patch,
        "class_token": class_token,
        "num_experts": num_experts,
        **placement,
        "act": VMoEConfig.act,
        "pre_norm": False,
        "ln_eps": VMoEConfig.ln_eps,
    }
    evidence = {
        "width": f"{kernel_key} {shape}",
        "patch": f"{kernel_key} {shape}",
        "depth": f"{p}Encoder/encoderblock_0..{depth - 1}",
        "mlp_dim": f"{fc1_key} {tuple(fc1.shape)}",
        "heads": f"{query_key} {tuple(query.shape)}",
        "pretrain_size": f"{pos_key} (grid {grid}x{grid})",
        "class_token": f"{p}cls " + ("present" if class_token else "absent"),
        "num_experts": f"{router_key} {tuple(router.shape)}",
        "moe_blocks": f"Moe/Router in blocks {list(sparse)}",
        "act": _VMOE_FIXED,
        "pre_norm": _VMOE_FIXED,
        "ln_eps": _VMOE_FIXED,
    }
    return VMoECheckpoint(fields, sparse, sd, arrays.unused(), layout, evidence, in_chans)


def _block_tensor(
    arrays: NamedTensors, base: str, name: str, shape: tuple[int, ...]
) -> torch.Tensor:
    return arrays.take(base + name, shape)


def _placement(path: Path, depth: int, sparse: tuple[int, ...]) -> dict[str, Any]:
    odd = tuple(range(1, depth, 2))
    if sparse == odd:
        return {"moe_placement": "every_other"}
    if sparse == odd[-len(sparse) :]:
        return {"moe_placement": "last_n", "moe_last_n": len(sparse)}
    raise CheckpointError(
        f"{path}: the experts are in blocks {list(sparse)} of {depth}; V-MoE models here place "
        f"them in every other block ({list(odd)}) or the last n of those "
        f"(moe_placement: {' or '.join(PLACEMENTS)}), so this layout cannot be loaded"
    )


# ----------------------------------------------------------------------------------------------
# Public API


def read_vmoe_checkpoint(path: str | os.PathLike[str]) -> VMoECheckpoint:
    """Read a V-MoE checkpoint and convert it to :class:`~.vmoe.VMoEEncoder` names.

    The layout is recognised from the content (a zip archive is an npz export) and the name
    (``*.index``). For vmoe's partitioned format only the parameters' slices are decoded.

    Args:
        path: vmoe's ``{prefix}.index`` (or the prefix itself) with the ``.data-*`` shards
            beside it, or an ``.npz`` of the flattened parameter tree.

    Returns:
        The inferred config fields, the converted state dict and the unused array names.

    Raises:
        CheckpointError: The file is missing, unreadable or truncated, holds no V-MoE, its
            arrays are inconsistent with each other, or its expert layers sit in blocks our
            placements cannot express.
    """
    arrays, layout = _open(Path(path))
    return _read(arrays, layout)


def vmoe_config_from_checkpoint(path: str | os.PathLike[str], **overrides: Any) -> VMoEConfig:
    """Build the :class:`~.vmoe.VMoEConfig` a V-MoE checkpoint fits.

    Args:
        path: A checkpoint :func:`read_vmoe_checkpoint` reads.
        **overrides: Other config fields: ``k`` (experts per token, not stored in the weights;
            default 2 as in the published models), capacities, decoder widths...

    Returns:
        The config.
    """
    fields = dict(read_vmoe_checkpoint(path).fields)
    fields.update(overrides)
    return VMoEConfig(**fields)


def _fitting_entries(checkpoint: VMoECheckpoint) -> list[str]:
    from open_buildings.models.registry import get_entry, list_models

    fits = []
    for name in list_models():
        config = get_entry(name).default_config
        if not name.startswith("vmoe_") or not isinstance(config, VMoEConfig):
            continue
        same = all(getattr(config, k) == checkpoint.fields[k] for k in FIT_FIELDS)
        if same and moe_blocks(config) == checkpoint.moe_blocks:
            fits.append(name)
    return fits


def _mismatch_error(
    checkpoint: VMoECheckpoint, encoder: VMoEEncoder, label: str, path: Path
) -> CheckpointError | None:
    config = encoder.config
    fields = checkpoint.fields
    lines = [
        f"{key} {fields[key]} (from {checkpoint.evidence[key]}) vs {getattr(config, key)} in "
        "the model"
        for key in FIT_FIELDS
        if fields[key] != getattr(config, key)
    ]
    ours = moe_blocks(config)
    if checkpoint.moe_blocks != ours:
        lines.append(
            f"experts in blocks {list(checkpoint.moe_blocks)} (from "
            f"{checkpoint.evidence['moe_blocks']}) vs {list(ours)} in the model"
        )
    bands = encoder.patch_embed.weight.shape[1]
    if checkpoint.in_chans != bands:
        lines.append(f"bands {checkpoint.in_chans} (patch embedding) vs {bands} in the model")
    if not lines:
        return None
    fits = _fitting_entries(checkpoint)
    skip = {"act", "pre_norm", "ln_eps"}
    overrides = {k: v for k, v in fields.items() if k not in skip}
    if not overrides["class_token"]:
        del overrides["class_token"]
    text = ", ".join(f"{k}: {yaml_value(v)}" for k, v in overrides.items())
    fixed = [k for k in skip if getattr(config, k) != fields[k]]
    drop = f" and drop the {', '.join(sorted(fixed))} override" if fixed else ""
    hint = f"use model: {fits[0]}, or " if fits else "use "
    return CheckpointError(
        f"checkpoint {path} does not fit {label}: " + "; ".join(lines) + f". To load it, {hint}"
        f"model_overrides: {{{text}}}{drop}"
    )


def load_vmoe(model_or_encoder: nn.Module, path: str | os.PathLike[str]) -> dict[str, int]:
    """Copy a V-MoE checkpoint's encoder into a V-MoE encoder, in place.

    The decoder of a :class:`BuildingModel` is left as it is. A position grid other than the
    model's ``pretrain_size // patch`` is resampled bicubically (as the encoder itself does for
    other input sizes); the class token's position is kept.

    Args:
        model_or_encoder: A :class:`BuildingModel` built from a ``vmoe_*`` entry, its
            :class:`~.vit.ViTSegmenter`, or a bare :class:`~.vmoe.VMoEEncoder`.
        path: A checkpoint :func:`read_vmoe_checkpoint` reads.

    Returns:
        ``{"loaded": encoder tensors written, "unused": source arrays left out}``.

    Raises:
        CheckpointError: The file is unreadable or holds no V-MoE, or its shape (width, depth,
            MLP width, heads, patch, class token, experts, expert blocks, bands) differs from
            the model's (the message gives the registry entry or ``model_overrides`` that fit).
    """
    path = Path(path)
    encoder, label = encoder_of(model_or_encoder, VMoEEncoder, "load_vmoe")
    checkpoint = read_vmoe_checkpoint(path)
    error = _mismatch_error(checkpoint, encoder, label, path)
    if error is not None:
        raise error
    grid = checkpoint.fields["pretrain_size"] // checkpoint.fields["patch"]
    loaded = copy_encoder_state(encoder, checkpoint.state_dict, grid=grid, path=path, what="V-MoE")
    return {"loaded": loaded, "unused": len(checkpoint.unused)}
