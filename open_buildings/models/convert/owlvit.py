"""Load published OWL-ViT checkpoints (Hugging Face layout) into this package's models.

The source is the ``model.safetensors`` of a ``transformers.OwlViTForObjectDetection`` (what
``save_pretrained`` writes and what the ``google/owlvit-*`` repositories publish), read from a
local file; nothing is downloaded. Its keys map as follows (``V = owlvit.vision_model.``):

- ``V.embeddings.class_embedding`` ``(C,)`` -> ``encoder.vit.cls_token`` ``(1, 1, C)``;
- ``V.embeddings.patch_embedding.weight`` -> ``encoder.vit.patch_embed.weight`` (its bias: 0);
- ``V.embeddings.position_embedding.weight`` ``(1 + N, C)`` -> ``encoder.vit.pos_embed``;
- ``V.pre_layernorm.*``, ``V.post_layernorm.*`` -> ``encoder.vit.norm_pre.*``, ``.norm.*``;
- ``V.encoder.layers.i.layer_norm{1,2}.*`` -> ``encoder.vit.blocks.i.norm{1,2}.*``;
- ``V.encoder.layers.i.self_attn.{q,k,v}_proj.*`` -> ``encoder.vit.blocks.i.attn.qkv.*``,
  stacked in that order;
- ``V.encoder.layers.i.self_attn.out_proj.*`` -> ``encoder.vit.blocks.i.attn.proj.*``;
- ``V.encoder.layers.i.mlp.fc{1,2}.*`` -> ``encoder.vit.blocks.i.mlp.fc{1,2}.*``;
- ``layer_norm.*`` (the object-embedding norm) -> ``encoder.layer_norm.*``;
- ``box_head.dense{0,1,2}.*`` and ``class_head.*`` -> the same names (detector only).

The text tower (``owlvit.text_model.*``, ``owlvit.text_projection``), the CLIP image projection
and ``owlvit.logit_scale`` are not part of this project: they are counted as unused.

Two targets:

- :func:`load_detector` builds an :class:`~open_buildings.models.owlvit_detector.OwlViTDetector`
  whose shape is read from the tensors (and from ``config.json`` beside them, for the head count);
- :func:`load_owlvit_backbone` (every ``owlvit_*`` entry's ``load_pretrained``) fills a
  segmentation model's encoder;
  its decoder keeps its random initialisation. A checkpoint made for another image size has its
  position embeddings interpolated to the model's grid.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from open_buildings.errors import CheckpointError
from open_buildings.models.base import BuildingModel
from open_buildings.models.owlvit import OwlViTImageEncoder
from open_buildings.models.owlvit_detector import DetectorConfig, OwlViTDetector
from open_buildings.models.vit import ViTConfig, resample_pos_embed

__all__ = [
    "load_queries",
    "VISION_PREFIX",
    "convert_state_dict",
    "detector_config",
    "load_detector",
    "load_owlvit_backbone",
    "read_checkpoint",
]

VISION_PREFIX = "owlvit.vision_model."
_WEIGHTS_NAME = "model.safetensors"
_LAYER = re.compile(r"encoder\.layers\.(\d+)\.")
_HEAD_PREFIXES = ("box_head.", "class_head.")


def _resolve(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / _WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(
            f"OWL-ViT checkpoint {path} does not exist; pass the model.safetensors of an "
            "OwlViTForObjectDetection (or the folder save_pretrained wrote)"
        )
    return path


def read_checkpoint(
    path: str | os.PathLike[str],
) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """Read a Hugging Face OWL-ViT checkpoint and the vision config beside it, if any.

    Args:
        path: ``model.safetensors`` or the folder holding it (and ``config.json``).

    Returns:
        The tensors, and the ``vision_config`` dict of ``config.json`` (empty without one).

    Raises:
        CheckpointError: The file is missing, not safetensors, or not an OWL-ViT checkpoint.
    """
    path = _resolve(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
    if f"{VISION_PREFIX}embeddings.class_embedding" not in tensors:
        found = ", ".join(sorted(tensors)[:5]) or "no tensors"
        raise CheckpointError(
            f"{path} is not an OWL-ViT checkpoint in the Hugging Face layout (no "
            f"{VISION_PREFIX}embeddings.class_embedding; found {found}, ...); pass the "
            "model.safetensors of a transformers OwlViTForObjectDetection"
        )
    vision: dict[str, object] = {}
    config_path = path.with_name("config.json")
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{config_path} is not valid JSON: {exc}") from exc
        if isinstance(config, dict) and isinstance(config.get("vision_config"), dict):
            vision = config["vision_config"]
    return tensors, vision


def detector_config(
    tensors: Mapping[str, torch.Tensor], vision_config: Mapping[str, object] | None = None
) -> DetectorConfig:
    """Work out a detector's architecture from a checkpoint's tensors.

    Width, patch, image size, depth, MLP width and query width come from tensor shapes. The head
    count, LayerNorm epsilon and activation come from ``vision_config`` when given; otherwise
    the CLIP conventions every published OWL-ViT follows (64-wide heads, eps 1e-5, quick-GELU).

    Args:
        tensors: The checkpoint (Hugging Face layout).
        vision_config: ``config.json``'s ``vision_config``, if there is one.

    Returns:
        The config.

    Raises:
        CheckpointError: A tensor the architecture is read from is missing or inconsistent.
    """
    vision = dict(vision_config or {})
    v = VISION_PREFIX
    try:
        width = int(tensors[f"{v}embeddings.class_embedding"].shape[0])
        patch = int(tensors[f"{v}embeddings.patch_embedding.weight"].shape[-1])
        positions = int(tensors[f"{v}embeddings.position_embedding.weight"].shape[0]) - 1
        mlp_dim = int(tensors[f"{v}encoder.layers.0.mlp.fc1.weight"].shape[0])
        query_dim = int(tensors["class_head.dense0.weight"].shape[0])
    except KeyError as exc:
        raise CheckpointError(
            f"the OWL-ViT checkpoint lacks {exc.args[0]!r}; it must hold the vision tower and "
            "the detection heads of an OwlViTForObjectDetection"
        ) from exc
    side = math.isqrt(positions)
    if side * side != positions:
        raise CheckpointError(f"{positions} patch position embeddings are not a square grid")
    layers = {int(m.group(1)) for k in tensors if k.startswith(v) and (m := _LAYER.search(k))}
    depth = max(layers) + 1 if layers else 0
    heads = int(vision.get("num_attention_heads", max(1, width // 64)))  # type: ignore[call-overload]
    act = str(vision.get("hidden_act", "quick_gelu"))
    if act not in ("quick_gelu", "gelu"):
        raise CheckpointError(f"the checkpoint's hidden_act {act!r} is not quick_gelu or gelu")
    vit = ViTConfig(
        width=width,
        depth=depth,
        mlp_dim=mlp_dim,
        heads=heads,
        patch=patch,
        pretrain_size=side * patch,
        class_token=True,
        pre_norm=True,
        act=act,
        ln_eps=float(vision.get("layer_norm_eps", 1e-5)),  # type: ignore[arg-type]
    )
    return DetectorConfig(vit=vit, query_dim=query_dim)


def _encoder_tensors(
    tensors: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], depth: int
) -> dict[str, torch.Tensor]:
    """Map the vision tower and the object-embedding LayerNorm onto ``OwlViTImageEncoder`` keys."""
    v = VISION_PREFIX
    cls = tensors[f"{v}embeddings.class_embedding"]
    pos = tensors[f"{v}embeddings.position_embedding.weight"][None]
    want = target["vit.pos_embed"]
    if pos.shape != want.shape and pos.shape[-1] == want.shape[-1]:
        side = math.isqrt(want.shape[1] - 1)
        pos = torch.cat([pos[:, :1], resample_pos_embed(pos[:, 1:], (side, side))], dim=1)
    patch_w = tensors[f"{v}embeddings.patch_embedding.weight"]
    out = {
        "vit.cls_token": cls.reshape(1, 1, -1),
        "vit.pos_embed": pos,
        "vit.patch_embed.weight": patch_w,
        "vit.patch_embed.bias": torch.zeros(patch_w.shape[0], dtype=patch_w.dtype),
    }
    for ours, theirs in (("norm_pre", "pre_layernorm"), ("norm", "post_layernorm")):
        for p in ("weight", "bias"):
            out[f"vit.{ours}.{p}"] = tensors[f"{v}{theirs}.{p}"]
    for i in range(depth):
        src, dst = f"{v}encoder.layers.{i}.", f"vit.blocks.{i}."
        for p in ("weight", "bias"):
            out[f"{dst}norm1.{p}"] = tensors[f"{src}layer_norm1.{p}"]
            out[f"{dst}norm2.{p}"] = tensors[f"{src}layer_norm2.{p}"]
            out[f"{dst}attn.qkv.{p}"] = torch.cat(
                [tensors[f"{src}self_attn.{n}_proj.{p}"] for n in ("q", "k", "v")]
            )
            out[f"{dst}attn.proj.{p}"] = tensors[f"{src}self_attn.out_proj.{p}"]
            out[f"{dst}mlp.fc1.{p}"] = tensors[f"{src}mlp.fc1.{p}"]
            out[f"{dst}mlp.fc2.{p}"] = tensors[f"{src}mlp.fc2.{p}"]
    for p in ("weight", "bias"):
        out[f"layer_norm.{p}"] = tensors[f"layer_norm.{p}"]
    return out


def convert_state_dict(
    tensors: Mapping[str, torch.Tensor],
    encoder: OwlViTImageEncoder,
    *,
    heads: bool = True,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Convert a Hugging Face OWL-ViT checkpoint to this package's key names.

    Args:
        tensors: The checkpoint.
        encoder: The target encoder (its depth and position-embedding grid decide the mapping).
        heads: Include ``box_head.*`` and ``class_head.*`` (for a detector); False for a
            segmentation backbone, which then counts them as unused.

    Returns:
        The converted tensors (encoder keys relative to the encoder, heads under their own
        names), and the source keys left unused, sorted.

    Raises:
        CheckpointError: A tensor the target needs is missing from the checkpoint.
    """
    target = encoder.state_dict()
    depth = len(encoder.vit.blocks)
    try:
        converted = _encoder_tensors(tensors, target, depth)
    except KeyError as exc:
        raise CheckpointError(
            f"the OWL-ViT checkpoint lacks {exc.args[0]!r}, which a {depth}-block encoder needs; "
            "is it an OwlViTForObjectDetection checkpoint of this depth?"
        ) from exc
    used = {
        k
        for k in tensors
        if k == "layer_norm.weight"
        or k == "layer_norm.bias"
        or (k.startswith(VISION_PREFIX) and _layer_used(k, depth))
    }
    if heads:
        for k in tensors:
            if k.startswith(_HEAD_PREFIXES):
                converted[k] = tensors[k]
                used.add(k)
    return converted, sorted(set(tensors) - used)


def _layer_used(key: str, depth: int) -> bool:
    m = _LAYER.search(key)
    return m is None or int(m.group(1)) < depth


def _copy_into(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor], where: str) -> int:
    state = module.state_dict()
    missing = sorted(set(state) - set(tensors))
    if missing:
        raise CheckpointError(
            f"the OWL-ViT checkpoint has nothing for {len(missing)} of {where}'s tensors "
            f"({', '.join(missing[:5])}); it does not fit this model"
        )
    bad = [
        f"{k}: checkpoint {tuple(tensors[k].shape)}, model {tuple(v.shape)}"
        for k, v in state.items()
        if tuple(tensors[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise CheckpointError(
            f"the OWL-ViT checkpoint does not fit {where} ({len(bad)} shape mismatches: "
            f"{'; '.join(bad[:3])}); build the model whose size matches the checkpoint "
            "(owlvit_b32 for google/owlvit-base-patch32, owlvit_b16 for -patch16)"
        )
    with torch.no_grad():
        for k, v in state.items():
            v.copy_(tensors[k].to(v.dtype))
    return len(state)


def load_detector(path: str | os.PathLike[str]) -> tuple[OwlViTDetector, dict[str, int]]:
    """Build an :class:`OwlViTDetector` from a Hugging Face OWL-ViT checkpoint.

    Args:
        path: ``model.safetensors`` or the folder ``save_pretrained`` wrote.

    Returns:
        The detector (in eval mode) and a report ``{"loaded": n, "unused": m}`` counting the
        detector's tensors filled and the source tensors left unused (the text tower).

    Raises:
        CheckpointError: The file is missing, unreadable, or not an OWL-ViT detector.
    """
    tensors, vision = read_checkpoint(path)
    detector = OwlViTDetector(detector_config(tensors, vision))
    converted, unused = convert_state_dict(tensors, detector.encoder, heads=True)
    loaded = _copy_into(
        detector.encoder,
        {k: v for k, v in converted.items() if not k.startswith(_HEAD_PREFIXES)},
        "the detector's encoder",
    )
    for name in ("box_head", "class_head"):
        head = getattr(detector, name)
        part = {k[len(name) + 1 :]: v for k, v in converted.items() if k.startswith(f"{name}.")}
        loaded += _copy_into(head, part, f"the detector's {name}")
    return detector.eval(), {"loaded": loaded, "unused": len(unused)}


def load_owlvit_backbone(model: BuildingModel, path: Path) -> dict[str, int]:
    """Fill an ``owlvit_*`` segmentation model's encoder from an OWL-ViT checkpoint, in place.

    Args:
        model: A model built from the registry (its ``net.encoder`` is an ``OwlViTImageEncoder``).
        path: The checkpoint (Hugging Face ``OwlViTForObjectDetection`` safetensors).

    Returns:
        ``{"loaded": n, "unused": m}``: encoder tensors filled, source tensors unused (the text
        tower and the detection heads).

    Raises:
        CheckpointError: The model is not an OWL-ViT segmenter or the checkpoint does not fit.
    """
    encoder = getattr(getattr(model, "net", None), "encoder", None)
    if not isinstance(encoder, OwlViTImageEncoder):
        raise CheckpointError(
            f"model {model.name!r} has no OWL-ViT image encoder to load into; build owlvit_b32, "
            "owlvit_b16 or owlvit_tiny"
        )
    tensors, _ = read_checkpoint(path)
    converted, unused = convert_state_dict(tensors, encoder, heads=False)
    loaded = _copy_into(encoder, converted, f"model {model.name!r}'s encoder")
    return {"loaded": loaded, "unused": len(unused)}


#: Largest query file read (bytes): 100,000 queries of 512 float32 are 200 MB.
MAX_QUERY_BYTES = 256_000_000


def load_queries(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read query embeddings and L2-normalise them (as OWL-ViT does with text embeddings).

    Args:
        path: A ``.npy`` file (no pickles), or a ``.safetensors`` file holding one tensor or a
            tensor named ``queries``; shaped ``(Q, D)`` or ``(D,)``.

    Returns:
        ``(Q, D)`` float32, each row of norm 1.

    Raises:
        CheckpointError: The file is missing, too large, unreadable, or not finite ``(Q, D)``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"query file {path} does not exist; see `ob-detect --help`")
    if path.stat().st_size > MAX_QUERY_BYTES:
        raise CheckpointError(f"query file {path} is over {MAX_QUERY_BYTES:,} bytes")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
            if not np.issubdtype(array.dtype, np.number):
                raise CheckpointError(f"{path} holds {array.dtype}, not numbers")
            queries = torch.from_numpy(np.asarray(array, dtype=np.float32))
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
            if "queries" in tensors:
                queries = tensors["queries"]
            elif len(tensors) == 1:
                queries = next(iter(tensors.values()))
            else:
                raise CheckpointError(
                    f"{path} holds {len(tensors)} tensors ({', '.join(sorted(tensors)[:5])}); "
                    "name the query embeddings 'queries'"
                )
            queries = queries.float()
        else:
            raise CheckpointError(f"query file {path}: use a .npy or .safetensors file")
    except (OSError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"cannot read query embeddings from {path}: {exc}") from exc
    if queries.ndim == 1:
        queries = queries[None]
    if queries.ndim != 2 or queries.shape[0] == 0:
        raise CheckpointError(
            f"query embeddings in {path} are shaped {tuple(queries.shape)}; expected (Q, D)"
        )
    norms = torch.linalg.norm(queries, dim=-1, keepdim=True)
    if not bool(torch.isfinite(queries).all()) or bool((norms == 0).any()):
        raise CheckpointError(f"query embeddings in {path} hold NaN, inf or all-zero rows")
    return queries / norms
