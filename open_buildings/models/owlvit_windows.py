"""Running an OWL-ViT detector over an image of any size: overlapping windows merged by NMS.

The detector (:class:`~.owlvit_detector.OwlViTDetector`) sees square windows the size it was
trained at; :func:`detect_pixels` cuts an image into windows that overlap by ``options.overlap``
pixels, runs them in batches, moves each window's boxes into image pixels and suppresses duplicates
across windows with per-query NMS (torchvision's ``batched_nms``). :func:`example_embedding` turns
one building's pixel box into a query (image-conditioned one-shot detection).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from open_buildings.errors import ConfigError
from open_buildings.models.owlvit_detector import OwlViTDetector

__all__ = ["DetectOptions", "detect_pixels", "example_embedding", "window_size"]


@dataclass(frozen=True)
class DetectOptions:
    """How the detector is run over imagery.

    Attributes:
        window: Side of the square windows a tile is cut into, in pixels (None: the detector's
            pretraining size).
        overlap: Overlap of neighbouring windows, in pixels.
        threshold: Keep boxes scoring above this.
        nms_iou: Suppress a box overlapping a better one of the same query by more than this.
        batch_size: Windows per forward pass.
    """

    window: int | None = None
    overlap: int = 64
    threshold: float = 0.1
    nms_iou: float = 0.3
    batch_size: int = 8


def _starts(length: int, window: int, overlap: int) -> list[int]:
    if length <= window:
        return [0]
    stride = max(1, window - overlap)
    starts = list(range(0, length - window, stride))
    return [*starts, length - window]


def window_size(detector: OwlViTDetector, options: DetectOptions) -> int:
    """Return the window side: ``options.window``, or the detector's pretraining size."""
    window = options.window or detector.config.vit.pretrain_size
    if window < detector.config.vit.patch:
        raise ConfigError(
            f"--window {window} is smaller than the patch ({detector.config.vit.patch})"
        )
    return window


def detect_pixels(
    detector: OwlViTDetector,
    rgb: np.ndarray,
    queries: torch.Tensor,
    options: DetectOptions = DetectOptions(),
    valid: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detect in one image, window by window, merging the windows' boxes with NMS.

    Args:
        detector: The detector (on the device to run on).
        rgb: ``(3, H, W)`` uint8.
        queries: ``(Q, D)`` query embeddings.
        options: Window size, overlap, thresholds, batch size.
        valid: ``(H, W)`` bool, False where there is no imagery; boxes centred there are dropped.

    Returns:
        ``(N, 4)`` boxes ``(x0, y0, x1, y1)`` in pixels, ``(N,)`` scores (decreasing) and
        ``(N,)`` query indices.
    """
    from torchvision.ops import batched_nms

    if rgb.ndim != 3 or rgb.shape[0] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be uint8 (3, H, W), got {rgb.dtype} {rgb.shape}")
    height, width = rgb.shape[1:]
    window = window_size(detector, options)
    origins = [
        (y, x)
        for y in _starts(height, window, options.overlap)
        for x in _starts(width, window, options.overlap)
    ]
    device = next(detector.parameters()).device
    image = torch.from_numpy(np.ascontiguousarray(rgb)).float().div_(255.0)
    queries = queries.to(device)
    boxes, scores, labels = [], [], []
    for first in range(0, len(origins), options.batch_size):
        chunk = origins[first : first + options.batch_size]
        crops = torch.stack([image[:, y : y + window, x : x + window] for y, x in chunk])
        found = detector.detect(
            crops.to(device), queries, threshold=options.threshold, nms_iou=options.nms_iou
        )
        for (y, x), det in zip(chunk, found, strict=True):
            boxes.append(det.boxes + torch.tensor([x, y, x, y], dtype=det.boxes.dtype))
            scores.append(det.scores)
            labels.append(det.labels)
    all_boxes = torch.cat(boxes) if boxes else torch.zeros(0, 4)
    all_scores = torch.cat(scores) if scores else torch.zeros(0)
    all_labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64)
    if len(origins) > 1:
        keep = batched_nms(all_boxes, all_scores, all_labels, options.nms_iou)
        all_boxes, all_scores, all_labels = all_boxes[keep], all_scores[keep], all_labels[keep]
    out_boxes = all_boxes.numpy().astype(np.float64)
    out_scores = all_scores.numpy().astype(np.float64)
    out_labels = all_labels.numpy().astype(np.int64)
    if valid is not None and len(out_boxes):
        cx = np.clip(((out_boxes[:, 0] + out_boxes[:, 2]) / 2).astype(int), 0, width - 1)
        cy = np.clip(((out_boxes[:, 1] + out_boxes[:, 3]) / 2).astype(int), 0, height - 1)
        seen = valid[cy, cx]
        out_boxes, out_scores, out_labels = out_boxes[seen], out_scores[seen], out_labels[seen]
    order = np.argsort(-out_scores, kind="stable")
    return out_boxes[order], out_scores[order], out_labels[order]


def example_embedding(
    detector: OwlViTDetector,
    rgb: np.ndarray,
    box: tuple[float, float, float, float],
    *,
    window: int | None = None,
) -> torch.Tensor:
    """Turn one object's pixel box in an image into a ``(1, D)`` query embedding.

    A window around the box is cut from the image (the detector's pretraining size, or larger if
    the box is), and :meth:`~.owlvit_detector.OwlViTDetector.embed_example` picks the embedding.

    Args:
        detector: The detector.
        rgb: ``(3, H, W)`` uint8.
        box: ``(x0, y0, x1, y1)`` in pixels, inside the image.
        window: Window side in pixels (None: the detector's pretraining size).

    Returns:
        The query embedding, ``(1, D)``.
    """
    x0, y0, x1, y1 = box
    height, width = rgb.shape[1:]
    side = max(window or detector.config.vit.pretrain_size, int(np.ceil(max(x1 - x0, y1 - y0))))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = int(np.clip(round(cx - side / 2), 0, max(0, width - side)))
    top = int(np.clip(round(cy - side / 2), 0, max(0, height - side)))
    crop = rgb[:, top : top + side, left : left + side]
    device = next(detector.parameters()).device
    pixels, (pad_h, pad_w) = detector.normalize(
        torch.from_numpy(np.ascontiguousarray(crop)).float().div_(255.0)[None].to(device)
    )
    scaled = torch.tensor(
        [(x0 - left) / pad_w, (y0 - top) / pad_h, (x1 - left) / pad_w, (y1 - top) / pad_h]
    )
    with torch.no_grad():
        chosen = detector.embed_example(pixels, scaled)
    return chosen.embedding[None].detach()
