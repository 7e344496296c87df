"""Change-detection scores on a pixel grid: pixel F1 and object F1 of changed buildings.

Counts are pooled over images (:class:`ChangeCounts` adds up), as change benchmarks report them.
Objects are the connected components of each mask, matched one-to-one at IoU >= 0.5 with the
evaluation module's greedy matching (:mod:`.matching`), as SpaceNet F1 matches footprints.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from scipy import ndimage

from open_buildings.evaluation.matching import greedy_match, label_ious


@dataclass
class ChangeCounts:
    """True positives and totals of changed pixels and changed objects, pooled."""

    tp_px: int = 0
    pred_px: int = 0
    truth_px: int = 0
    tp_obj: int = 0
    pred_obj: int = 0
    truth_obj: int = 0

    def __add__(self, other: ChangeCounts) -> ChangeCounts:
        return ChangeCounts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def scores(self) -> dict[str, dict[str, float]]:
        """``{"pixel": {precision, recall, f1}, "object_iou50": {...}}``."""
        return {
            "pixel": prf(self.tp_px, self.pred_px, self.truth_px),
            "object_iou50": prf(self.tp_obj, self.pred_obj, self.truth_obj),
        }


def prf(tp: int, n_pred: int, n_truth: int) -> dict[str, float]:
    """Precision, recall and F1 from counts (0 where undefined)."""
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_truth if n_truth else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def count_change(
    pred: np.ndarray, truth: np.ndarray, *, pred_objects: np.ndarray | None = None
) -> ChangeCounts:
    """Count one image's changed pixels and objects.

    Args:
        pred: bool ``(H, W)``, predicted change.
        truth: bool ``(H, W)``, true change.
        pred_objects: int labels of the predicted objects (e.g. rasterised footprints); default:
            the connected components of ``pred``.
    """
    pred, truth = pred.astype(bool), truth.astype(bool)
    objects = ndimage.label(pred)[0] if pred_objects is None else pred_objects
    labels = ndimage.label(truth)[0]
    pred_ids, _, truth_ids, _, pairs = label_ious(objects, labels)
    match = greedy_match(np.ones(len(pred_ids)), len(truth_ids), pairs, [0.5])
    return ChangeCounts(
        tp_px=int((pred & truth).sum()),
        pred_px=int(pred.sum()),
        truth_px=int(truth.sum()),
        tp_obj=int(match.matched[0].sum()),
        pred_obj=len(pred_ids),
        truth_obj=len(truth_ids),
    )
