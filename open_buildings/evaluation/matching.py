"""Intersection over union between instances, and greedy one-to-one matching.

Both metrics in this package (COCO instance mAP and SpaceNet F1) match predictions to ground truth
the same way: predictions are taken in order of decreasing confidence (a stable sort, so equal
scores keep their input order), and each takes the still-unmatched truth instance it overlaps
most, if that IoU reaches the threshold. They differ only in how a tie in IoU is broken:
pycocotools keeps the *last* truth instance with the highest IoU, SpaceNet/solaris the *first*.

IoUs are kept sparse (only pairs that overlap), so a region with 10,000 buildings costs memory
in proportion to the overlapping pairs, not 10,000 x 10,000.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import shapely

from open_buildings.errors import EvaluationError


@dataclass(frozen=True)
class Pairs:
    """Overlapping (prediction, truth) pairs and their IoU, with indices into the inputs.

    Attributes:
        pred: Index of the prediction in each pair (int64).
        truth: Index of the truth instance in each pair (int64).
        iou: Intersection over union of each pair (float64), always > 0.
    """

    pred: np.ndarray
    truth: np.ndarray
    iou: np.ndarray

    def __len__(self) -> int:
        return len(self.iou)

    def subset(self, pred_index: np.ndarray, truth_index: np.ndarray) -> Pairs:
        """Return the pairs among a subset of predictions and truth, re-indexed locally.

        Args:
            pred_index: Global indices of the predictions to keep (their order sets the local
                indices 0..n-1).
            truth_index: Global indices of the truth instances to keep, likewise.

        Returns:
            The pairs whose two members are both kept, with local indices.
        """
        n_pred = int(max(self.pred.max(initial=-1), pred_index.max(initial=-1))) + 1
        n_truth = int(max(self.truth.max(initial=-1), truth_index.max(initial=-1))) + 1
        pred_local = np.full(n_pred, -1, dtype=np.int64)
        truth_local = np.full(n_truth, -1, dtype=np.int64)
        pred_local[pred_index] = np.arange(len(pred_index))
        truth_local[truth_index] = np.arange(len(truth_index))
        p, t = pred_local[self.pred], truth_local[self.truth]
        keep = (p >= 0) & (t >= 0)
        return Pairs(p[keep], t[keep], self.iou[keep])


def polygon_ious(
    pred: np.ndarray,
    truth: np.ndarray,
    pred_image: np.ndarray | None = None,
    truth_image: np.ndarray | None = None,
) -> Pairs:
    """Compute the IoU of every overlapping pair of polygons (vectorized with shapely 2).

    Candidate pairs come from an STRtree over the truth; their intersection areas are computed
    in one vectorized call. The union is ``area(pred) + area(truth) - intersection``.
    Coordinates must be planar (a metric CRS or pixels), never degrees.

    Args:
        pred: Predicted polygons (shapely objects).
        truth: Ground-truth polygons.
        pred_image: Image id of each prediction; pairs across images are dropped. None: one image.
        truth_image: Image id of each truth polygon (required if ``pred_image`` is given).

    Returns:
        The pairs with IoU > 0.
    """
    pred = np.asarray(pred, dtype=object)
    truth = np.asarray(truth, dtype=object)
    if len(pred) == 0 or len(truth) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Pairs(empty, empty.copy(), np.zeros(0))
    tree = shapely.STRtree(truth)
    p, t = tree.query(pred, predicate="intersects")
    if pred_image is not None:
        if truth_image is None:
            raise EvaluationError("polygon_ious: give truth_image along with pred_image")
        same = np.asarray(pred_image)[p] == np.asarray(truth_image)[t]
        p, t = p[same], t[same]
    inter = shapely.area(shapely.intersection(pred[p], truth[t]))
    union = shapely.area(pred)[p] + shapely.area(truth)[t] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    keep = iou > 0
    return Pairs(p[keep].astype(np.int64), t[keep].astype(np.int64), iou[keep])


def label_ious(
    pred_labels: np.ndarray, truth_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Pairs]:
    """Compute areas and overlaps of the instances in two instance-label rasters.

    Label 0 is background; every other value is one instance.

    Args:
        pred_labels: Integer raster of predicted instances.
        truth_labels: Integer raster of ground-truth instances, the same shape.

    Returns:
        ``(pred_ids, pred_area, truth_ids, truth_area, pairs)``: the sorted instance labels of
        each raster, their pixel counts, and the overlapping pairs (indices into the id arrays).

    Raises:
        EvaluationError: If the shapes differ or the rasters are not integer.
    """
    pred_labels = np.asarray(pred_labels)
    truth_labels = np.asarray(truth_labels)
    if pred_labels.shape != truth_labels.shape:
        raise EvaluationError(
            f"instance rasters differ in shape: predictions {pred_labels.shape}, "
            f"truth {truth_labels.shape}; evaluate rasters of the same image grid"
        )
    for name, arr in (("prediction", pred_labels), ("truth", truth_labels)):
        if not np.issubdtype(arr.dtype, np.integer):
            raise EvaluationError(f"the {name} raster is {arr.dtype}; instance labels are integers")
    p = pred_labels.ravel()
    t = truth_labels.ravel()
    pred_ids, p_inv, pred_area = np.unique(p, return_inverse=True, return_counts=True)
    truth_ids, t_inv, truth_area = np.unique(t, return_inverse=True, return_counts=True)
    # drop the background label 0 (it is the first id when present)
    p_off = 1 if len(pred_ids) and pred_ids[0] == 0 else 0
    t_off = 1 if len(truth_ids) and truth_ids[0] == 0 else 0
    both = (p != 0) & (t != 0)
    n_t = len(truth_ids)
    key = p_inv[both].astype(np.int64) * n_t + t_inv[both]
    keys, inter = np.unique(key, return_counts=True)
    pi, ti = keys // n_t - p_off, keys % n_t - t_off
    pred_area, truth_area = pred_area[p_off:], truth_area[t_off:]
    union = pred_area[pi] + truth_area[ti] - inter
    iou = inter.astype(np.float64) / union.astype(np.float64)
    pairs = Pairs(pi.astype(np.int64), ti.astype(np.int64), iou)
    return pred_ids[p_off:], pred_area, truth_ids[t_off:], truth_area, pairs


@dataclass(frozen=True)
class Matching:
    """The outcome of greedy matching in one image, at one or more IoU thresholds.

    Attributes:
        order: Indices of the predictions that took part, in the order they were matched
            (decreasing score; at most ``max_dets``).
        truth: ``(n_thresholds, len(order))`` index of the matched truth instance, -1 if none.
        iou: ``(n_thresholds, len(order))`` IoU of each match, 0 where unmatched.
    """

    order: np.ndarray
    truth: np.ndarray
    iou: np.ndarray

    @property
    def matched(self) -> np.ndarray:
        """``(n_thresholds, len(order))`` booleans: which predictions found a match."""
        return self.truth >= 0


def greedy_match(
    scores: np.ndarray,
    n_truth: int,
    pairs: Pairs,
    thresholds: Sequence[float] | np.ndarray,
    *,
    ties: Literal["first", "last"] = "first",
    strict: bool = False,
    max_dets: int | None = None,
) -> Matching:
    """Match predictions to truth one-to-one, greedily, in order of decreasing score.

    For each prediction in turn (stable sort on ``-score``), the candidates are the truth
    instances not yet matched whose IoU with it reaches the threshold (``>=``; ``>`` if
    ``strict``). The prediction takes the candidate with the highest IoU; among equal IoUs the
    first (``ties="first"``, SpaceNet/solaris) or the last (``ties="last"``, pycocotools) in
    truth order. All thresholds are matched independently, in one pass.

    Args:
        scores: Confidence of each prediction.
        n_truth: Number of truth instances.
        pairs: Overlapping pairs with local indices (see :func:`polygon_ious`).
        thresholds: IoU thresholds.
        ties: Which truth instance wins a tie in IoU.
        strict: Require IoU strictly above the threshold (solaris compares ``iou > miniou``).
        max_dets: Keep only the highest-scoring predictions (pycocotools: 100). None: all.

    Returns:
        The matching at every threshold.
    """
    scores = np.asarray(scores, dtype=np.float64)
    thr = np.asarray(thresholds, dtype=np.float64).reshape(-1, 1)
    order = np.argsort(-scores, kind="mergesort")
    if max_dets is not None:
        order = order[:max_dets]
    n_t = len(thr)
    truth_of = np.full((n_t, len(order)), -1, dtype=np.int64)
    iou_of = np.zeros((n_t, len(order)))
    if len(pairs) == 0 or n_truth == 0 or len(order) == 0:
        return Matching(order, truth_of, iou_of)
    # candidates of each prediction, sorted by truth index (CSR layout)
    by = np.lexsort((pairs.truth, pairs.pred))
    cand_t, cand_v = pairs.truth[by], pairs.iou[by]
    starts = np.searchsorted(pairs.pred[by], np.arange(len(scores) + 1))
    taken = np.zeros((n_t, n_truth), dtype=bool)
    rows = np.arange(n_t)
    for k, d in enumerate(order):
        s, e = starts[d], starts[d + 1]
        if s == e:
            continue
        g, v = cand_t[s:e], cand_v[s:e]
        reach = v > thr if strict else v >= thr
        ok = reach & ~taken[:, g]
        if not ok.any():
            continue
        vals = np.where(ok, v, -1.0)
        if ties == "last":
            j = (e - s - 1) - np.argmax(vals[:, ::-1], axis=1)
        else:
            j = np.argmax(vals, axis=1)
        hit = ok[rows, j]
        taken[rows[hit], g[j[hit]]] = True
        truth_of[hit, k] = g[j[hit]]
        iou_of[hit, k] = v[j[hit]]
    return Matching(order, truth_of, iou_of)
