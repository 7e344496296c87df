"""OWL-ViT's image side (Minderer et al. 2022): a segmentation backbone and a building detector.

OWL-ViT is a CLIP ViT (class token, a LayerNorm before the blocks, quick-GELU, LayerNorm eps 1e-5)
whose final pooling is dropped. After the final LayerNorm every patch token is multiplied by the
class token and LayerNorm-ed again: one *object embedding* per patch. Two heads read them:

- the box head, a 3-layer MLP (exact GELU) giving 4 numbers per patch, plus a fixed per-patch bias
  (the inverse sigmoid of the patch's normalised grid corner, and of the patch size), then a
  sigmoid: a box ``(cx, cy, w, h)`` in [0, 1] of the input image;
- the class head: a linear projection to the query width; logits are the cosine similarity of
  that embedding with each query embedding, shifted and scaled per patch (``(logit + shift) *
  (elu(scale) + 1)``).

Everything here follows ``transformers.OwlViTForObjectDetection`` to float rounding (tested in
``tests/models/test_owlvit_convert.py``), including its choice of the patch's bottom-right grid
corner (``(i + 1) / n``, as in the original scenic code) for the box-centre bias.

Two uses:

1. Segmentation backbones ``owlvit_b32``, ``owlvit_b16`` and ``owlvit_tiny``: the encoder
   feeds :class:`~open_buildings.models.dense_decoder.DenseDecoder` with four token maps, the
   deepest of which is the object embeddings the detection heads were trained on.
2. :class:`~.owlvit_detector.OwlViTDetector` (in :mod:`.owlvit_detector`): building boxes with
   scores, queried by embeddings (text embeddings from OWL-ViT's text tower, made offline; see
   :mod:`open_buildings.commands.detect`) or by an example box in an image (image-conditioned
   one-shot detection, :meth:`~.owlvit_detector.OwlViTDetector.embed_example`).

:mod:`open_buildings.models.convert.owlvit` loads the published checkpoints into both.
"""

from __future__ import annotations

import torch
from torch import nn

from open_buildings.errors import ConfigError
from open_buildings.models.base import InputSpec
from open_buildings.models.heads import CHANNELS
from open_buildings.models.registry import register_family
from open_buildings.models.vit import (
    DenseDecoder,
    EncoderOutput,
    ViTConfig,
    ViTEncoder,
    ViTSegmenter,
)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "OWLVIT_B16",
    "OWLVIT_B32",
    "OWLVIT_TINY",
    "OwlViTImageEncoder",
    "box_bias",
    "build_owlvit_segmenter",
    "cxcywh_to_xyxy",
]

#: CLIP's (and OWL-ViT's) input normalisation.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


def _clip_input_spec(config: ViTConfig) -> InputSpec:
    return InputSpec(mean=CLIP_MEAN, std=CLIP_STD, divisor=config.patch)


def _clip_vit(**fields: object) -> ViTConfig:
    clip = {"class_token": True, "pre_norm": True, "act": "quick_gelu", "ln_eps": 1e-5}
    return ViTConfig(**{**clip, **fields})  # type: ignore[arg-type]


#: OWL-ViT B/32 (``google/owlvit-base-patch32``): ViT-B/32 at 768 px.
OWLVIT_B32 = _clip_vit(
    width=768, depth=12, mlp_dim=3072, heads=12, patch=32, pretrain_size=768, decoder_channels=256
)
#: OWL-ViT B/16 (``google/owlvit-base-patch16``): ViT-B/16 at 768 px.
OWLVIT_B16 = _clip_vit(
    width=768, depth=12, mlp_dim=3072, heads=12, patch=16, pretrain_size=768, decoder_channels=256
)
#: Tiny widths for tests and smoke runs.
OWLVIT_TINY = _clip_vit(
    width=64,
    depth=4,
    mlp_dim=128,
    heads=4,
    patch=16,
    pretrain_size=64,
    decoder_channels=32,
    detail_channels=8,
)


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """Convert ``(..., 4)`` boxes from centre/size to corners (``x0, y0, x1, y1``)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_bias(rows: int, cols: int) -> torch.Tensor:
    """Return the per-patch box bias OWL-ViT adds before the box sigmoid.

    Centre bias: the inverse sigmoid of each patch's bottom-right grid corner ``((j + 1) / cols,
    (i + 1) / rows)``; size bias: the inverse sigmoid of the patch size ``(1 / cols, 1 / rows)``.
    Computed with the same float32 operations as ``OwlViTForObjectDetection.compute_box_bias``.

    Args:
        rows: Patch rows.
        cols: Patch columns.

    Returns:
        ``(rows * cols, 4)`` float32, patches in row-major order.
    """
    x = torch.arange(1, cols + 1, dtype=torch.float32)
    y = torch.arange(1, rows + 1, dtype=torch.float32)
    xx, yy = torch.meshgrid(x, y, indexing="xy")
    corners = torch.stack((xx / cols, yy / rows), dim=-1).view(-1, 2).clip(0.0, 1.0)
    centre = torch.log(corners + 1e-4) - torch.log1p(-corners + 1e-4)
    size = torch.full_like(centre, 1.0)
    size[..., 0] /= cols
    size[..., 1] /= rows
    size = torch.log(size + 1e-4) - torch.log1p(-size + 1e-4)
    return torch.cat([centre, size], dim=-1)


class OwlViTImageEncoder(nn.Module):
    """A CLIP ViT plus OWL-ViT's object-embedding LayerNorm.

    ``forward`` returns an :class:`EncoderOutput` whose feature taken after the last block is the
    object embeddings (``layer_norm(patch token * class token)``) rather than the plain tokens.

    Args:
        config: A ViT config in the CLIP variant (``class_token=True``).
        in_chans: Input bands.
    """

    def __init__(self, config: ViTConfig, in_chans: int = 3) -> None:
        super().__init__()
        if not config.class_token:
            raise ConfigError(
                "OWL-ViT's object embeddings multiply each patch token by the class token; "
                "set class_token=True (the CLIP variant: class_token, pre_norm, act='quick_gelu')"
            )
        self.vit = ViTEncoder(config, in_chans)
        self.layer_norm = nn.LayerNorm(config.width, eps=config.ln_eps)

    @property
    def config(self) -> ViTConfig:
        """The ViT's config (its ``patch`` is what :class:`ViTSegmenter` pads to)."""
        return self.vit.config

    def object_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """Turn final tokens into per-patch object embeddings.

        Args:
            tokens: ``(B, 1 + N, C)`` tokens after the final LayerNorm, class token first.

        Returns:
            ``(B, N, C)``: ``layer_norm(patch_token * class_token)``.
        """
        return self.layer_norm(tokens[:, 1:] * tokens[:, :1])

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        """Encode normalised ``(B, bands, H, W)`` images with sides divisible by the patch size."""
        out = self.vit(x)
        features = list(out.features)
        if self.vit.feature_layers[-1] == len(self.vit.blocks) - 1:
            features[-1] = self.object_embeddings(out.tokens)
        return EncoderOutput(out.tokens, features, out.grid)


def build_owlvit_segmenter(config: ViTConfig) -> ViTSegmenter:
    """Build the OWL-ViT image encoder with the dense decoder and the instance heads.

    Args:
        config: The architecture (CLIP variant).

    Returns:
        The network (expects CLIP-normalised input).
    """
    encoder = OwlViTImageEncoder(config)
    decoder = DenseDecoder(config.width, config.decoder_channels, config.detail_channels)
    return ViTSegmenter(encoder, decoder)


_MODELS = [
    ("owlvit_b32", OWLVIT_B32, "OWL-ViT B/32 image encoder (CLIP ViT-B/32, 768 px) + DPT decoder"),
    ("owlvit_b16", OWLVIT_B16, "OWL-ViT B/16 image encoder (CLIP ViT-B/16, 768 px) + DPT decoder"),
    ("owlvit_tiny", OWLVIT_TINY, "OWL-ViT-style encoder, width 64, depth 4: tests and smoke runs"),
]


def _load_pretrained(model: nn.Module, source: str) -> dict[str, int]:
    """The image side of a Hugging Face OWL-ViT (``models.convert.owlvit``)."""
    from open_buildings.models.convert.owlvit import load_owlvit_backbone

    return load_owlvit_backbone(model, source)


register_family(
    _MODELS,
    build_owlvit_segmenter,
    input_spec=_clip_input_spec,
    output_channels=CHANNELS,
    load_pretrained=_load_pretrained,
)
