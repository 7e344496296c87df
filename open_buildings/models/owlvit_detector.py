"""OWL-ViT as a detector: object embeddings scored against queries, with box and class heads.

:class:`OwlViTDetector` is the image side of Minderer et al.'s OWL-ViT (the encoder of
:mod:`.owlvit`): each patch's object embedding gets a box (the box head, with the box bias) and a
similarity to each query (the class head, with its shift and scale). Queries are text embeddings
made once with OWL-ViT's text tower, or the embedding of an example box in an image
(:meth:`OwlViTDetector.embed_example`). Windows over large images: :mod:`.owlvit_windows`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torchvision.ops import batched_nms, box_iou, generalized_box_iou

from open_buildings.errors import ConfigError
from open_buildings.models.owlvit import (
    CLIP_MEAN,
    CLIP_STD,
    OWLVIT_B32,
    OwlViTImageEncoder,
    box_bias,
    cxcywh_to_xyxy,
)
from open_buildings.models.padding import pad_to_multiple
from open_buildings.models.vit import ViTConfig

__all__ = [
    "BoxHead",
    "ClassHead",
    "DetectionOutput",
    "Detections",
    "DetectorConfig",
    "ExampleQuery",
    "OwlViTDetector",
]


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
