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

1. Segmentation backbones ``owlvit_b32``, ``owlvit_b16`` and ``owlvit_tiny``: the encoder feeds
   :class:`~open_buildings.models.vit.DenseDecoder` with four token maps, the deepest of which is
   the object embeddings the detection heads were trained on.
2. :class:`OwlViTDetector`: building boxes with scores, queried by embeddings (text embeddings
   from OWL-ViT's text tower, made offline; see :mod:`open_buildings.pipelines.detect`) or by an
   example box in an image (image-conditioned one-shot detection,
   :meth:`OwlViTDetector.embed_example`).

:mod:`open_buildings.models.convert.owlvit` loads the published checkpoints into both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torchvision.ops import batched_nms, box_iou, generalized_box_iou

from open_buildings.errors import ConfigError
from open_buildings.models.base import InputSpec
from open_buildings.models.heads import CHANNELS
from open_buildings.models.padding import pad_to_multiple
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
    "BoxHead",
    "ClassHead",
    "DetectionOutput",
    "DetectorConfig",
    "Detections",
    "ExampleQuery",
    "OwlViTDetector",
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


@dataclass(frozen=True)
class DetectorConfig:
    """An OWL-ViT detector.

    Attributes:
        vit: The image encoder (CLIP variant).
        query_dim: Width of the class embeddings and of the query embeddings they are compared
            with (the text tower's width: 512 for the published B/32 and B/16).
    """

    vit: ViTConfig = OWLVIT_B32
    query_dim: int = 512


class BoxHead(nn.Module):
    """OWL-ViT's box MLP: ``dense0 -> GELU -> dense1 -> GELU -> dense2`` (4 outputs).

    Args:
        width: Object-embedding width.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.dense0 = nn.Linear(width, width)
        self.dense1 = nn.Linear(width, width)
        self.dense2 = nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(..., width)`` embeddings to ``(..., 4)`` box logits (before the bias)."""
        return self.dense2(F.gelu(self.dense1(F.gelu(self.dense0(x)))))


class ClassHead(nn.Module):
    """OWL-ViT's class head: projection, cosine logits, learned per-patch shift and scale.

    Args:
        width: Object-embedding width.
        query_dim: Width of the class and query embeddings.
    """

    def __init__(self, width: int, query_dim: int) -> None:
        super().__init__()
        self.dense0 = nn.Linear(width, query_dim)
        self.logit_shift = nn.Linear(width, 1)
        self.logit_scale = nn.Linear(width, 1)

    def forward(
        self, feats: torch.Tensor, queries: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Score every patch against every query.

        Args:
            feats: ``(B, P, width)`` object embeddings.
            queries: ``(Q, query_dim)`` shared by the batch, or ``(B, Q, query_dim)``.

        Returns:
            ``(B, P, Q)`` logits and the ``(B, P, query_dim)`` L2-normalised class embeddings.
        """
        embeds = self.dense0(feats)
        embeds = embeds / (torch.linalg.norm(embeds, dim=-1, keepdim=True) + 1e-6)
        queries = queries / (torch.linalg.norm(queries, dim=-1, keepdim=True) + 1e-6)
        logits = torch.einsum("...pd,...qd->...pq", embeds, queries)
        scale = F.elu(self.logit_scale(feats)) + 1
        return (logits + self.logit_shift(feats)) * scale, embeds


class DetectionOutput(NamedTuple):
    """Raw per-patch predictions of :meth:`OwlViTDetector.forward`.

    Attributes:
        image_embeds: ``(B, rows, cols, width)`` object embeddings.
        boxes: ``(B, rows*cols, 4)`` boxes ``(cx, cy, w, h)`` in [0, 1] of the (padded) input.
        logits: ``(B, rows*cols, Q)`` query logits; None when no queries were given.
        class_embeds: ``(B, rows*cols, query_dim)`` class embeddings (L2-normalised when queries
            were given, raw projections otherwise, as in Hugging Face's ``class_predictor``).
    """

    image_embeds: torch.Tensor
    boxes: torch.Tensor
    logits: torch.Tensor | None
    class_embeds: torch.Tensor


class Detections(NamedTuple):
    """One image's detections.

    Attributes:
        boxes: ``(N, 4)`` float boxes ``(x0, y0, x1, y1)`` in pixels of the image, clipped to it.
        scores: ``(N,)`` sigmoid of the best query logit, decreasing.
        labels: ``(N,)`` int64 index of the best query.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor


class ExampleQuery(NamedTuple):
    """The query embedding picked from an example box (see :meth:`OwlViTDetector.embed_example`).

    Attributes:
        embedding: ``(query_dim,)`` class embedding of the chosen patch (not normalised).
        index: Index of the chosen patch.
        box: ``(4,)`` its predicted box ``(x0, y0, x1, y1)`` in [0, 1] of the example image.
        pred_boxes: ``(rows*cols, 4)`` every patch's predicted box ``(cx, cy, w, h)``.
    """

    embedding: torch.Tensor
    index: int
    box: torch.Tensor
    pred_boxes: torch.Tensor


class OwlViTDetector(nn.Module):
    """OWL-ViT's image side as an open-vocabulary building detector.

    :meth:`forward` works on normalised pixels (what Hugging Face calls ``pixel_values``) with
    sides divisible by the patch size; :meth:`detect` takes images in [0, 1] of any size and
    returns boxes in pixels.

    Args:
        config: The architecture.
    """

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        if config.query_dim < 1:
            raise ConfigError(f"query_dim must be >= 1, got {config.query_dim}")
        self.config = config
        width = config.vit.width
        self.encoder = OwlViTImageEncoder(config.vit)
        self.box_head = BoxHead(width)
        self.class_head = ClassHead(width, config.query_dim)
        shape = (1, 3, 1, 1)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(shape), persistent=False)

    def image_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Return the ``(B, rows, cols, width)`` object embeddings of normalised images."""
        out = self.encoder.vit(pixel_values)
        feats = self.encoder.object_embeddings(out.tokens)
        return feats.reshape(feats.shape[0], *out.grid, feats.shape[-1])

    def predict_boxes(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """Return ``(B, rows*cols, 4)`` boxes ``(cx, cy, w, h)`` in [0, 1] from object embeddings.

        Args:
            image_embeds: ``(B, rows, cols, width)`` from :meth:`image_embeds`.
        """
        b, rows, cols, width = image_embeds.shape
        logits = self.box_head(image_embeds.reshape(b, rows * cols, width))
        bias = box_bias(rows, cols).to(device=logits.device, dtype=logits.dtype)
        return torch.sigmoid(logits + bias)

    def forward(
        self, pixel_values: torch.Tensor, queries: torch.Tensor | None = None
    ) -> DetectionOutput:
        """Predict a box per patch, and score it against the queries.

        Args:
            pixel_values: ``(B, 3, H, W)`` CLIP-normalised images, sides divisible by the patch.
            queries: ``(Q, query_dim)`` or ``(B, Q, query_dim)`` query embeddings; None gives
                boxes and raw class embeddings only.

        Returns:
            The raw predictions.
        """
        embeds = self.image_embeds(pixel_values)
        b, rows, cols, width = embeds.shape
        feats = embeds.reshape(b, rows * cols, width)
        boxes = self.predict_boxes(embeds)
        if queries is None:
            return DetectionOutput(embeds, boxes, None, self.class_head.dense0(feats))
        if queries.shape[-1] != self.config.query_dim:
            raise ValueError(
                f"query embeddings are {queries.shape[-1]}-d but this detector's class head is "
                f"{self.config.query_dim}-d; make them with the text tower of the same checkpoint"
            )
        logits, class_embeds = self.class_head(feats, queries.to(feats.dtype))
        return DetectionOutput(embeds, boxes, logits, class_embeds)

    def normalize(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """CLIP-normalise ``[0, 1]`` images and zero-pad them (bottom, right) to the patch size.

        Args:
            images: ``(B, 3, H, W)`` floats in [0, 1].

        Returns:
            The pixel values and the padded ``(height, width)``.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"the detector takes RGB batches shaped (B, 3, H, W), got {tuple(images.shape)}"
            )
        if not images.is_floating_point():
            raise ValueError(f"images must be floats in [0, 1], got {images.dtype}")
        x = (images.to(self.mean.dtype) - self.mean) / self.std
        x, _ = pad_to_multiple(x, self.config.vit.patch, mode="constant", centre=False)
        return x, (x.shape[-2], x.shape[-1])

    def embed_example(
        self, pixel_values: torch.Tensor, box: torch.Tensor | None = None
    ) -> ExampleQuery:
        """Pick the query embedding for an example object (image-conditioned one-shot detection).

        As in OWL-ViT and Hugging Face's ``image_guided_detection``: the patches whose predicted
        box overlaps the example box best (IoU at least 0.8 of the best IoU) are candidates, and
        the candidate whose class embedding is least like the image's mean class embedding (the
        most object-like, least background-like) becomes the query. With ``box=None`` the example
        is the whole image, which is exactly Hugging Face's behaviour for a query image. When no
        predicted box overlaps the example, generalised IoU ranks them (candidates: within 20% of
        the best value); Hugging Face returns no query then.

        Args:
            pixel_values: ``(1, 3, H, W)`` CLIP-normalised image holding the example.
            box: ``(4,)`` example box ``(x0, y0, x1, y1)`` in [0, 1] of the image; None: all of it.

        Returns:
            The chosen embedding, its patch index and box, and all predicted boxes.
        """
        if pixel_values.ndim != 4 or pixel_values.shape[0] != 1:
            raise ValueError(
                "embed_example takes one image shaped (1, 3, H, W), got "
                f"{tuple(pixel_values.shape)}"
            )
        out = self.forward(pixel_values)
        pred = out.boxes[0]
        corners = cxcywh_to_xyxy(pred)
        target = (
            torch.tensor([[0.0, 0.0, 1.0, 1.0]], device=pred.device, dtype=pred.dtype)
            if box is None
            else torch.as_tensor(box, device=pred.device, dtype=pred.dtype).reshape(1, 4)
        )
        if not bool((target[:, 2:] > target[:, :2]).all()):
            raise ValueError(f"the example box {target[0].tolist()} must have x1 > x0 and y1 > y0")
        ious = box_iou(target, corners)[0]
        if bool((ious == 0).all()):
            ious = generalized_box_iou(target, corners)[0]
        # 0.8 of a negative best (generalised IoU) would exceed it and select nothing, as in
        # Hugging Face (which then returns no query); within 20% of its magnitude works for both
        best = ious.max()
        selected = torch.nonzero(ious >= best - 0.2 * best.abs()).squeeze(1)
        if selected.numel() == 0:
            raise ValueError("no predicted box could be compared with the example box (NaN boxes)")
        embeds = out.class_embeds[0]
        similarity = embeds[selected] @ embeds.mean(dim=0)
        index = int(selected[torch.argmin(similarity)])
        return ExampleQuery(embeds[index], index, corners[index], pred)

    @torch.no_grad()
    def detect(
        self,
        images: torch.Tensor,
        queries: torch.Tensor,
        *,
        threshold: float = 0.1,
        nms_iou: float | None = 0.3,
        max_detections: int | None = None,
    ) -> list[Detections]:
        """Detect the queried objects in ``[0, 1]`` images of any size.

        Scores are the sigmoid of each patch's best query logit (Hugging Face's
        ``post_process_object_detection``); boxes are scaled to pixels of the padded input and
        clipped to the image; overlapping boxes are then suppressed (NMS) per query.

        Args:
            images: ``(B, 3, H, W)`` floats in [0, 1].
            queries: ``(Q, query_dim)`` query embeddings.
            threshold: Keep boxes scoring above this.
            nms_iou: Suppress a box overlapping a better one of the same query by more than this
                IoU; None keeps all.
            max_detections: Keep at most this many per image (best first); None keeps all.

        Returns:
            One :class:`Detections` per image.
        """
        height, width = images.shape[-2:]
        pixels, (pad_h, pad_w) = self.normalize(images)
        out = self.forward(pixels, queries)
        best = out.logits.float().max(dim=-1)
        scores_all, labels_all = torch.sigmoid(best.values), best.indices
        scale = torch.tensor(
            [pad_w, pad_h, pad_w, pad_h], dtype=torch.float32, device=pixels.device
        )
        limit = torch.tensor([width, height, width, height], dtype=torch.float32).to(scale)
        boxes_all = torch.minimum((cxcywh_to_xyxy(out.boxes.float()) * scale).clamp(min=0), limit)
        results = []
        for boxes, scores, labels in zip(boxes_all, scores_all, labels_all, strict=True):
            keep = scores > threshold
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            if nms_iou is not None:
                order = batched_nms(boxes, scores, labels, nms_iou)
            else:
                order = torch.argsort(scores, descending=True, stable=True)
            if max_detections is not None:
                order = order[:max_detections]
            results.append(Detections(boxes[order].cpu(), scores[order].cpu(), labels[order].cpu()))
        return results


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
