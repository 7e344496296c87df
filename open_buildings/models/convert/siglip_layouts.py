"""Reading a SigLIP/PaliGemma vision tower's tensors: Hugging Face and big_vision layouts.

:func:`open_tensors` opens a ``.safetensors`` file (or a sharded ``.safetensors.index.json``) or a
big_vision ``.npz``; :func:`read_hf` and :func:`read_npz` turn each layout into
:class:`SiglipCheckpoint` (``ViTEncoder`` names, plus the config fields the shapes determine and
the tensor each was read from). :mod:`.siglip` checks the result against a model and loads it.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError, safe_open

from open_buildings.errors import CheckpointError
from open_buildings.models.convert.files import (
    NamedTensors,
    layer_indices,
    open_npz,
    unreadable,
)
from open_buildings.models.convert.flax_vit import flax_block_state, flax_heads

logger = logging.getLogger(__name__)

HF_ANCHOR = "embeddings.patch_embedding.weight"
NPZ_ANCHOR = "embedding/kernel"
#: Attention heads of the published SigLIP widths (B, L, So400m and g have 12, 16, 16, 16 heads;
#: the ViT-S shape has 6); any other width gets 64-wide heads.
KNOWN_HEADS = {384: 6, 768: 12, 1024: 16, 1152: 16, 1536: 16}
#: A ``config.json`` larger than this is not a model config; it is not read.
MAX_CONFIG_BYTES = 1 << 20
#: Fields compared between a checkpoint and the model it is loaded into, in message order.
SHAPE_FIELDS = ("width", "depth", "mlp_dim", "heads", "patch", "class_token", "ln_eps")


class SiglipCheckpoint(NamedTuple):
    """A SigLIP vision tower read from a file, in :class:`ViTEncoder` names.

    Attributes:
        fields: :class:`ViTConfig` fields the file determines (``width``, ``depth``, ``mlp_dim``,
            ``patch``, ``pretrain_size``, ``class_token``; ``heads`` and ``ln_eps`` only when
            known: always for npz, for safetensors from the ``heads`` argument or a
            ``config.json``).
        state_dict: ``ViTEncoder`` state-dict keys to tensors (position grid as stored).
        unused: Source tensor names that were not converted (MAP head, text tower, LLM...).
        layout: ``"huggingface"`` or ``"big_vision"``.
        evidence: For each field, the source tensor (and shape) or file it was read from.
        in_chans: Input bands of the patch embedding.
    """

    fields: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    unused: list[str]
    layout: str
    evidence: dict[str, str]
    in_chans: int


def default_heads(width: int) -> int:
    """Return the attention heads to assume for a SigLIP tower of this width.

    Args:
        width: Token width.

    Returns:
        The published head count for the SigLIP widths (384: 6, 768: 12, 1024, 1152 and 1536:
        16), else ``width // 64``.

    Raises:
        CheckpointError: The width is neither published nor a multiple of 64.
    """
    if width in KNOWN_HEADS:
        return KNOWN_HEADS[width]
    if width % 64:
        raise CheckpointError(
            f"cannot guess the attention heads of a width-{width} tower (not a published SigLIP "
            "width, not a multiple of 64); pass heads=..."
        )
    return width // 64


# ----------------------------------------------------------------------------------------------
# Reading tensors from files


_WHAT = "SigLIP vision tower"
_REMEDY = (
    "download it again, or pass a SigLIP/PaliGemma .safetensors, .safetensors.index.json or "
    "big_vision .npz file"
)


def _open_safetensors(path: Path) -> NamedTensors:
    try:
        handle = safe_open(str(path), framework="pt")
        names = list(handle.keys())
    except (SafetensorError, OSError, ValueError) as exc:
        raise unreadable(path, "safetensors", exc, _REMEDY) from exc

    def get(name: str) -> torch.Tensor:
        try:
            return handle.get_tensor(name)
        except (SafetensorError, OSError, ValueError) as exc:
            raise unreadable(path, "safetensors", exc, _REMEDY) from exc

    return NamedTensors(path, names, get, what=_WHAT)


def _open_index(path: Path) -> NamedTensors:
    if path.stat().st_size > 64 * MAX_CONFIG_BYTES:
        raise CheckpointError(
            f"{path} is {path.stat().st_size} bytes, too large for a safetensors index (a small "
            "JSON file); pass the model's *.safetensors.index.json or a .safetensors file"
        )
    try:
        weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{path} is not a safetensors index (a JSON object with a 'weight_map'); pass the "
            "model's *.safetensors.index.json or one .safetensors file"
        ) from exc
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{path}: 'weight_map' must map tensor names to shard files")
    shards: dict[str, NamedTensors] = {}
    for shard in set(weight_map.values()):
        if not isinstance(shard, str) or Path(shard).name != shard or shard in ("", ".", ".."):
            raise CheckpointError(
                f"{path}: shard {shard!r} is not a plain file name next to the index; "
                "shards must sit in the index's folder"
            )

    def get(name: str) -> torch.Tensor:
        shard = weight_map[name]
        if shard not in shards:
            shard_path = path.parent / shard
            if not shard_path.is_file():
                raise CheckpointError(
                    f"{path} lists shard {shard} (holding {name!r}) but {shard_path} does not "
                    "exist; download every shard of the vision tower"
                )
            shards[shard] = _open_safetensors(shard_path)
        return shards[shard].take(name)

    return NamedTensors(path, list(weight_map), get, what=_WHAT)


def open_tensors(path: Path) -> tuple[NamedTensors, str]:
    """Open a tower's tensors by file kind; return them and the layout name."""
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint {path} is a folder; pass the file in it: model.safetensors, "
            "model.safetensors.index.json (sharded) or the big_vision .npz"
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a local file")
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic.startswith(b"PK"):
        return open_npz(path, what=_WHAT, as_what="a big_vision .npz", remedy=_REMEDY), "big_vision"
    if path.name.endswith(".json"):
        return _open_index(path), "huggingface"
    return _open_safetensors(path), "huggingface"


# ----------------------------------------------------------------------------------------------
# Layouts


def find_prefix(tensors: NamedTensors, anchor: str, sep: str) -> str:
    """Return the name prefix under which the vision tower's tensors sit."""
    prefixes = sorted(
        name[: -len(anchor)]
        for name in tensors.names
        if name == anchor or name.endswith(sep + anchor)
    )
    if not prefixes:
        sample = ", ".join(sorted(tensors.names)[:5]) or "none"
        raise CheckpointError(
            f"{tensors.path} holds no SigLIP vision tower: no tensor named '...{anchor}' "
            f"(first names: {sample}). Pass a SigLIP, SigLIP vision-model or PaliGemma checkpoint"
        )
    if len(prefixes) > 1:
        image = [p for p in prefixes if p.endswith(f"img{sep}") or "vision" in p]
        if len(image) != 1:
            raise CheckpointError(
                f"{tensors.path} holds several vision towers ({', '.join(prefixes)}); "
                "extract the one to load into its own file"
            )
        return image[0]
    return prefixes[0]


def _hf_config(path: Path, width: int) -> tuple[dict[str, Any], str] | None:
    """The vision part of a ``config.json`` beside the weights, when it describes this tower."""
    config_path = path.parent / "config.json"
    if not config_path.is_file() or config_path.stat().st_size > MAX_CONFIG_BYTES:
        return None
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(config, dict):
        return None
    vision = config.get("vision_config", config)
    if not isinstance(vision, dict) or vision.get("hidden_size", width) != width:
        return None
    return vision, str(config_path)


def read_hf(tensors: NamedTensors, heads: int | None) -> SiglipCheckpoint:
    """Convert a Hugging Face SigLIP vision tower (``SiglipVisionModel`` names)."""
    prefix = find_prefix(tensors, HF_ANCHOR, ".")
    path = tensors.path
    patch_key = prefix + HF_ANCHOR
    patch_w = tensors.take(patch_key)
    if patch_w.ndim != 4 or patch_w.shape[-1] != patch_w.shape[-2]:
        raise CheckpointError(
            f"{path}: {patch_key} has shape {tuple(patch_w.shape)}, not a square conv kernel "
            "(out, bands, p, p); SigLIP 2 NaFlex towers are not supported"
        )
    width, in_chans, patch = patch_w.shape[0], patch_w.shape[1], patch_w.shape[-1]
    pos_key = f"{prefix}embeddings.position_embedding.weight"
    pos = tensors.take(pos_key)
    if pos.ndim != 2 or pos.shape[1] != width:
        raise CheckpointError(
            f"{path}: {pos_key} has shape {tuple(pos.shape)}, expected (tokens, {width})"
        )
    grid = _square_side(path, pos_key, pos.shape[0])
    layers = layer_indices(tensors, re.escape(prefix) + r"encoder\.layers\.(\d+)\.")
    fc1_key = f"{prefix}encoder.layers.0.mlp.fc1.weight"
    mlp_dim = tensors.take(fc1_key).shape[0]
    c, m = width, mlp_dim
    sd: dict[str, torch.Tensor] = {
        "patch_embed.weight": patch_w,
        "patch_embed.bias": tensors.take(f"{prefix}embeddings.patch_embedding.bias", (c,)),
        "pos_embed": pos.unsqueeze(0),
    }
    for i in layers:
        src, dst = f"{prefix}encoder.layers.{i}.", f"blocks.{i}."
        for ours, theirs in (("norm1", "layer_norm1"), ("norm2", "layer_norm2")):
            sd[f"{dst}{ours}.weight"] = tensors.take(f"{src}{theirs}.weight", (c,))
            sd[f"{dst}{ours}.bias"] = tensors.take(f"{src}{theirs}.bias", (c,))
        attn = f"{src}self_attn."
        sd[f"{dst}attn.qkv.weight"] = torch.cat(
            [tensors.take(f"{attn}{n}_proj.weight", (c, c)) for n in "qkv"]
        )
        sd[f"{dst}attn.qkv.bias"] = torch.cat(
            [tensors.take(f"{attn}{n}_proj.bias", (c,)) for n in "qkv"]
        )
        sd[f"{dst}attn.proj.weight"] = tensors.take(f"{attn}out_proj.weight", (c, c))
        sd[f"{dst}attn.proj.bias"] = tensors.take(f"{attn}out_proj.bias", (c,))
        sd[f"{dst}mlp.fc1.weight"] = tensors.take(f"{src}mlp.fc1.weight", (m, c))
        sd[f"{dst}mlp.fc1.bias"] = tensors.take(f"{src}mlp.fc1.bias", (m,))
        sd[f"{dst}mlp.fc2.weight"] = tensors.take(f"{src}mlp.fc2.weight", (c, m))
        sd[f"{dst}mlp.fc2.bias"] = tensors.take(f"{src}mlp.fc2.bias", (c,))
    sd["norm.weight"] = tensors.take(f"{prefix}post_layernorm.weight", (c,))
    sd["norm.bias"] = tensors.take(f"{prefix}post_layernorm.bias", (c,))

    shape = tuple(patch_w.shape)
    fields: dict[str, Any] = {
        "width": width,
        "depth": len(layers),
        "mlp_dim": mlp_dim,
        "patch": patch,
        "pretrain_size": grid * patch,
        "class_token": False,
    }
    evidence = {
        "width": f"{patch_key} {shape}",
        "patch": f"{patch_key} {shape}",
        "depth": f"{prefix}encoder.layers.0..{len(layers) - 1}",
        "mlp_dim": f"{fc1_key} {(mlp_dim, width)}",
        "pretrain_size": f"{pos_key} {tuple(pos.shape)}",
        "class_token": "no class token in the Hugging Face SigLIP layout",
    }
    if heads is not None:
        fields["heads"], evidence["heads"] = int(heads), "the heads argument"
    found = _hf_config(path, width)
    if found is not None:
        vision, config_path = found
        if heads is None and isinstance(vision.get("num_attention_heads"), int):
            fields["heads"] = vision["num_attention_heads"]
            evidence["heads"] = f"num_attention_heads in {config_path}"
        if isinstance(vision.get("layer_norm_eps"), float):
            fields["ln_eps"] = vision["layer_norm_eps"]
            evidence["ln_eps"] = f"layer_norm_eps in {config_path}"
    return SiglipCheckpoint(fields, sd, tensors.unused(), "huggingface", evidence, in_chans)


def read_npz(tensors: NamedTensors, heads_arg: int | None) -> SiglipCheckpoint:
    """Convert a big_vision SigLIP image tower (flax names, ``/``-joined)."""
    prefix = find_prefix(tensors, NPZ_ANCHOR, "/")
    path = tensors.path
    kernel_key = prefix + NPZ_ANCHOR
    kernel = tensors.take(kernel_key)
    if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1]:
        raise CheckpointError(
            f"{path}: {kernel_key} has shape {tuple(kernel.shape)}, not a square HWIO patch "
            "kernel; NaFlex towers are not supported"
        )
    patch, in_chans, width = kernel.shape[0], kernel.shape[2], kernel.shape[3]
    c = width
    pos_key = f"{prefix}pos_embedding"
    if not tensors.has(pos_key):
        raise CheckpointError(
            f"{path}: {pos_key!r} is missing; only big_vision ViTs (position embeddings of the "
            "patches only, as SigLIP has) are supported, not the original ViT layout"
        )
    pos = tensors.take(pos_key)
    pos = pos.unsqueeze(0) if pos.ndim == 2 else pos
    if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != width:
        raise CheckpointError(
            f"{path}: {pos_key} has shape {tuple(pos.shape)}, expected (1, tokens, {width})"
        )
    grid = _square_side(path, pos_key, pos.shape[1])
    sd: dict[str, torch.Tensor] = {
        "patch_embed.weight": kernel.permute(3, 2, 0, 1),
        "patch_embed.bias": tensors.take(f"{prefix}embedding/bias", (c,)),
    }
    class_token = tensors.has(f"{prefix}cls")
    if class_token:
        # big_vision adds no position to the class token; ours adds pos_embed[:, :1], so zero.
        sd["cls_token"] = tensors.take(f"{prefix}cls", (1, 1, c))
        pos = torch.cat([pos.new_zeros(1, 1, c), pos], dim=1)
    sd["pos_embed"] = pos

    scanned = f"{prefix}Transformer/encoderblock/"
    if tensors.has(f"{scanned}LayerNorm_0/scale"):
        depth = tensors.take(f"{scanned}LayerNorm_0/scale").shape[0]
        blocks = [(scanned, i) for i in range(depth)]
        depth_evidence = f"{scanned}LayerNorm_0/scale {(depth, c)} (layer-scanned)"
    else:
        pattern = re.escape(f"{prefix}Transformer/encoderblock_") + r"(\d+)/"
        blocks = [
            (f"{prefix}Transformer/encoderblock_{i}/", None)
            for i in layer_indices(tensors, pattern)
        ]
        depth = len(blocks)
        depth_evidence = f"{prefix}Transformer/encoderblock_0..{depth - 1}"
    first, first_idx = blocks[0]
    query_key = f"{first}MultiHeadDotProductAttention_0/query/kernel"
    query = tensors.take(query_key)
    query_shape = tuple(query.shape)
    query = query[first_idx] if first_idx is not None else query
    heads = flax_heads(query, width=c, path=path, key=query_key)
    if heads_arg is not None and heads_arg != heads:
        raise CheckpointError(
            f"heads={heads_arg} was given but {path} has {heads} heads ({query_key} "
            f"{tuple(query.shape)} is width x heads x head_dim); leave heads unset for npz files"
        )
    fc1_key = f"{first}MlpBlock_0/Dense_0/kernel"
    fc1 = tensors.take(fc1_key)
    mlp_dim = fc1.shape[-1]
    m = mlp_dim
    cache: dict[str, torch.Tensor] = {}

    def block_tensor(base: str, idx: int | None, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        key = base + name
        if idx is None:
            return tensors.take(key, shape)
        if key not in cache:
            cache[key] = tensors.take(key, (depth, *shape))
        return cache[key][idx]

    for i, (base, idx) in enumerate(blocks):
        get = functools.partial(block_tensor, base, idx)
        block = flax_block_state(
            get, "MultiHeadDotProductAttention_0/", "MlpBlock_0/", width=c, heads=heads, mlp_dim=m
        )
        sd.update({f"blocks.{i}.{key}": value for key, value in block.items()})
    sd["norm.weight"] = tensors.take(f"{prefix}Transformer/encoder_norm/scale", (c,))
    sd["norm.bias"] = tensors.take(f"{prefix}Transformer/encoder_norm/bias", (c,))
    sd = {k: v.contiguous() for k, v in sd.items()}

    shape = tuple(kernel.shape)
    fields: dict[str, Any] = {
        "width": width,
        "depth": depth,
        "mlp_dim": mlp_dim,
        "heads": heads,
        "patch": patch,
        "pretrain_size": grid * patch,
        "class_token": class_token,
    }
    evidence = {
        "width": f"{kernel_key} {shape}",
        "patch": f"{kernel_key} {shape}",
        "depth": depth_evidence,
        "mlp_dim": f"{fc1_key} {tuple(fc1.shape)}",
        "heads": f"{query_key} {query_shape}",
        "pretrain_size": f"{pos_key} (grid {grid}x{grid})",
        "class_token": f"{prefix}cls " + ("present" if class_token else "absent"),
    }
    return SiglipCheckpoint(fields, sd, tensors.unused(), "big_vision", evidence, in_chans)


def _square_side(path: Path, key: str, tokens: int) -> int:
    side = int(round(tokens**0.5))
    if side * side != tokens:
        raise CheckpointError(
            f"{path}: {key} holds {tokens} positions, not a square grid; this is not a SigLIP "
            "image tower"
        )
    return side
