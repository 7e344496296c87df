"""Validation during training: predict whole scenes and score them with the evaluation module.

Predictions and labels go through the same path as ``ob-infer`` and ``ob-eval``: decode ->
polygonize -> COCO mAP and SpaceNet F1 in the scene's metric CRS. Only buildings whose centroid
lies in the scene's core and over imagery count, on both sides.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from pyproj import CRS
from scipy import ndimage as ndi

from open_buildings.evaluation.evaluate import evaluate
from open_buildings.evaluation.io import Footprints
from open_buildings.geo.polygonize import polygonize
from open_buildings.models import heads
from open_buildings.models.base import BuildingModel
from open_buildings.training.scenes import Scene


def predict(model: BuildingModel, rgb: np.ndarray, *, bf16: bool = True) -> np.ndarray:
    """Return the model's float32 logits ``(C, H, W)`` for one uint8 image ``(bands, H, W)``."""
    model.eval()
    x = torch.from_numpy(np.ascontiguousarray(rgb)).float().div_(255.0)[None]
    device = next(model.parameters()).device
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(x.to(device))
    return logits[0].float().cpu().numpy()


def _owned(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Zero the instances whose centroid pixel is outside ``keep``; return the new labels."""
    ids = np.unique(labels[labels > 0])
    if ids.size == 0:
        return labels
    centres = np.asarray(ndi.center_of_mass(np.ones_like(labels), labels, ids))
    rows = np.clip(np.round(centres[:, 0]).astype(int), 0, labels.shape[0] - 1)
    cols = np.clip(np.round(centres[:, 1]).astype(int), 0, labels.shape[1] - 1)
    dropped = ids[~keep[rows, cols]]
    return np.where(np.isin(labels, dropped), 0, labels)


def _footprints(frames: list, crs: str, scored: bool, name: str) -> Footprints:
    geoms, scores, images = [], [], []
    for index, frame in enumerate(frames):
        local = frame.to_crs(crs)
        geoms.extend(local.geometry.values)
        scores.extend(local["confidence"].to_numpy())
        images.extend([index] * len(local))
    n = len(geoms)
    return Footprints(
        geometry=np.array(geoms, dtype=object),
        score=np.asarray(scores, dtype=float) if scored else None,
        image_id=np.asarray(images, dtype=int),
        crs=CRS.from_user_input(crs),
        source=name,
        names=np.array([f"{name} {i}" for i in range(n)], dtype=object),
    )


def validate(model: BuildingModel, scenes: Sequence[Scene], *, bf16: bool = True) -> dict:
    """Score the model on labelled scenes.

    Args:
        model: the model to score (left in eval mode).
        scenes: labelled scenes, all in one metric CRS or not (each is compared in its own).
        bf16: run the forward pass under bf16 autocast.

    Returns:
        ``{"ap", "ap50", "ap75", "f1", "precision", "recall", "n_pred", "n_truth"}``.
    """
    preds, truths, crs = [], [], None
    for scene in scenes:
        if scene.instances is None:
            continue
        keep = scene.valid & scene.core
        labels, confidence = heads.decode(predict(model, scene.rgb, bf16=bf16))
        labels = _owned(labels, keep)
        truth = _owned(scene.instances, keep)
        g = scene.grid
        preds.append(polygonize(labels, g.transform, g.crs, confidence=confidence))
        truths.append(polygonize(truth, g.transform, g.crs))
        crs = crs or g.crs
    if crs is None:
        raise ValueError("validation needs at least one labelled scene")
    result = evaluate(
        _footprints(preds, crs, True, "prediction"), _footprints(truths, crs, False, "label")
    )
    return {
        "ap": result.coco.ap,
        "ap50": result.coco.ap50,
        "ap75": result.coco.ap75,
        "f1": result.f1.total.f1,
        "precision": result.f1.total.precision,
        "recall": result.f1.total.recall,
        "n_pred": result.n_pred,
        "n_truth": result.n_truth,
    }
