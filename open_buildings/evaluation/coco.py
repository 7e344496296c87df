"""COCO-style instance mAP (AP over IoU 0.50:0.05:0.95, AP50, AP75), for polygons and rasters.

This reproduces pycocotools' ``COCOeval`` (``iouType="segm"``, one category) with its defaults,
and is tested against it to 1e-6 (``tests/evaluation/test_coco.py``):

- **IoU thresholds** ``np.linspace(.5, .95, 10)`` and **recall points** ``np.linspace(0, 1, 101)``,
  computed exactly as pycocotools does (so 0.7000000000000001 is the seventh threshold, as there).
- **maxDets = 100** by default: only the 100 highest-scoring predictions *per image* count, as in
  pycocotools' headline AP. ``max_dets=None`` lifts the cap; ``ob-eval`` uses it when the inputs
  have no image ids (a whole region is one "image", and a cap of 100 would make no sense there).
- **Area range "all"** (``[0, 1e10]``): no instance is ignored for its size. 1e10 is in the input's
  units squared (pixels or m2); no building comes near it.
- **Crowd regions**: there are none in building footprints, so every truth instance has
  ``iscrowd=0``. In pycocotools a crowd region may absorb any number of detections, which then
  count neither as true nor false positives, and it never counts towards recall. Inputs that mark
  crowd regions are refused by :mod:`open_buildings.evaluation.io` rather than mis-scored.
- **Matching**: per image, detections in order of decreasing score (stable sort), each taking the
  unmatched truth instance with the highest IoU >= threshold; ties go to the *last* such truth
  instance, as in pycocotools.
- **Accumulation**: detections of all images sorted by score (stable, images in sorted id order),
  precision ``tp / (tp + fp + eps)`` made monotone, sampled at the 101 recall points
  (``searchsorted(..., side="left")``), then averaged. With no truth at all AP is undefined:
  pycocotools reports -1, this module ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from open_buildings.errors import EvaluationError
from open_buildings.evaluation.matching import Pairs, greedy_match, label_ious, polygon_ious

#: pycocotools' ``Params.iouThrs`` (the same expression, hence the same floats).
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
#: pycocotools' ``Params.recThrs``.
RECALL_POINTS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
#: pycocotools' default ``maxDets[-1]``, the cap used for AP, AP50 and AP75.
MAX_DETS = 100


@dataclass(frozen=True)
class ImageInstances:
    """One image's predictions and truth, reduced to what matching needs.

    Attributes:
        scores: Confidence of each prediction.
        n_truth: Number of truth instances.
        pairs: Overlapping (prediction, truth) pairs with local indices and IoU.
    """

    scores: np.ndarray
    n_truth: int
    pairs: Pairs


@dataclass(frozen=True)
class CocoResult:
    """Instance mAP in pycocotools' terms.

    Attributes:
        ap: Mean AP over IoU 0.50:0.05:0.95 (pycocotools ``stats[0]``); None without truth.
        ap50: AP at IoU 0.5 (``stats[1]``).
        ap75: AP at IoU 0.75 (``stats[2]``).
        ar: Mean recall over the IoU thresholds at ``max_dets`` (``stats[8]``).
        ap_per_threshold: AP at each of :data:`IOU_THRESHOLDS` (None without truth).
        max_dets: The per-image cap on predictions that was used (None: no cap).
        n_pred: Predictions that took part (after the cap).
        n_truth: Truth instances.
    """

    ap: float | None
    ap50: float | None
    ap75: float | None
    ar: float | None
    ap_per_threshold: tuple[float | None, ...]
    max_dets: int | None
    n_pred: int
    n_truth: int

    def as_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {
            "AP": self.ap,
            "AP50": self.ap50,
            "AP75": self.ap75,
            "AR": self.ar,
            "AP_per_iou_threshold": {
                f"{t:.2f}": v for t, v in zip(IOU_THRESHOLDS, self.ap_per_threshold)
            },
            "max_dets_per_image": self.max_dets,
            "n_pred": self.n_pred,
            "n_truth": self.n_truth,
        }


def coco_map(images: Sequence[ImageInstances], *, max_dets: int | None = MAX_DETS) -> CocoResult:
    """Compute COCO instance mAP from per-image scores and IoU pairs.

    Args:
        images: The images, in the order pycocotools would visit them (sorted image ids).
        max_dets: Per-image cap on predictions (pycocotools' default 100); None for no cap.

    Returns:
        AP, AP50, AP75 and AR, as pycocotools' ``COCOeval.summarize`` reports them.
    """
    n_thr = len(IOU_THRESHOLDS)
    all_scores: list[np.ndarray] = []
    all_matched: list[np.ndarray] = []
    n_truth = 0
    for image in images:
        m = greedy_match(
            image.scores, image.n_truth, image.pairs, IOU_THRESHOLDS, ties="last", max_dets=max_dets
        )
        all_scores.append(np.asarray(image.scores, dtype=np.float64)[m.order])
        all_matched.append(m.matched)
        n_truth += image.n_truth
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    matched = np.concatenate(all_matched, axis=1) if all_matched else np.zeros((n_thr, 0), bool)
    if n_truth == 0:
        return CocoResult(None, None, None, None, (None,) * n_thr, max_dets, len(scores), 0)
    inds = np.argsort(-scores, kind="mergesort")
    tps = matched[:, inds]
    fps = ~tps
    tp_sum = np.cumsum(tps, axis=1).astype(dtype=float)
    fp_sum = np.cumsum(fps, axis=1).astype(dtype=float)
    q_all = np.zeros((n_thr, len(RECALL_POINTS)))
    recall = np.zeros(n_thr)
    for t in range(n_thr):
        tp, fp = tp_sum[t], fp_sum[t]
        nd = len(tp)
        rc = tp / n_truth
        pr = tp / (fp + tp + np.spacing(1))
        recall[t] = rc[-1] if nd else 0.0
        pr = np.maximum.accumulate(pr[::-1])[::-1] if nd else pr
        idx = np.searchsorted(rc, RECALL_POINTS, side="left")
        valid = idx < nd
        q_all[t, valid] = pr[idx[valid]]
    per_t = tuple(float(np.mean(q_all[t])) for t in range(n_thr))
    i50 = int(np.where(IOU_THRESHOLDS == 0.5)[0][0])
    i75 = int(np.where(IOU_THRESHOLDS == 0.75)[0][0])
    return CocoResult(
        ap=float(np.mean(q_all)),
        ap50=float(np.mean(q_all[i50])),
        ap75=float(np.mean(q_all[i75])),
        ar=float(np.mean(recall)),
        ap_per_threshold=per_t,
        max_dets=max_dets,
        n_pred=len(scores),
        n_truth=n_truth,
    )


def _image_order(ids: np.ndarray) -> np.ndarray:
    """Sorted unique image ids (pycocotools visits images in sorted id order)."""
    return np.unique(ids) if len(ids) else ids


def map_over_images(
    scores: np.ndarray,
    pred_image: np.ndarray,
    truth_image: np.ndarray,
    pairs: Pairs,
    *,
    max_dets: int | None = MAX_DETS,
) -> CocoResult:
    """COCO AP of predictions and truths spread over images, from their overlapping pairs.

    Images are visited in sorted id order, as pycocotools does; only pairs within one image
    count.

    Args:
        scores: ``(N,)`` prediction confidences.
        pred_image: ``(N,)`` image id of each prediction.
        truth_image: ``(M,)`` image id of each truth instance.
        pairs: IoUs of the overlapping (prediction, truth) pairs, indexed into the N and M.
        max_dets: Per-image cap on predictions (pycocotools' default 100); None for no cap.

    Returns:
        AP, AP50, AP75 and AR.
    """
    images = []
    for image in _image_order(np.concatenate([pred_image, truth_image])):
        pi = np.flatnonzero(pred_image == image)
        ti = np.flatnonzero(truth_image == image)
        images.append(ImageInstances(scores[pi], len(ti), pairs.subset(pi, ti)))
    return coco_map(images, max_dets=max_dets)


def polygon_map(
    pred: np.ndarray,
    pred_scores: np.ndarray,
    truth: np.ndarray,
    *,
    pred_image: np.ndarray | None = None,
    truth_image: np.ndarray | None = None,
    max_dets: int | None = MAX_DETS,
    pairs: Pairs | None = None,
) -> CocoResult:
    """COCO instance mAP for polygons (in a planar CRS: metres or pixels, never degrees).

    Args:
        pred: Predicted polygons.
        pred_scores: Their confidences.
        truth: Ground-truth polygons.
        pred_image: Image id of each prediction (None: all in one image).
        truth_image: Image id of each truth polygon (None: all in one image).
        max_dets: Per-image cap on predictions (pycocotools' default 100); None for no cap.
        pairs: Precomputed :func:`polygon_ious` of these inputs (computed if None).

    Returns:
        AP, AP50, AP75 and AR.

    Raises:
        EvaluationError: If the scores do not match the predictions.
    """
    pred = np.asarray(pred, dtype=object)
    truth = np.asarray(truth, dtype=object)
    scores = np.asarray(pred_scores, dtype=np.float64)
    if scores.shape != (len(pred),):
        raise EvaluationError(f"{len(pred)} predictions but {scores.size} scores")
    if not np.all(np.isfinite(scores)):
        raise EvaluationError("prediction scores must be finite numbers (found NaN or inf)")
    p_img = np.zeros(len(pred), dtype=np.int64) if pred_image is None else np.asarray(pred_image)
    t_img = np.zeros(len(truth), dtype=np.int64) if truth_image is None else np.asarray(truth_image)
    if pairs is None:
        pairs = polygon_ious(pred, truth, p_img, t_img)
    return map_over_images(scores, p_img, t_img, pairs, max_dets=max_dets)


def raster_map(
    pred_labels: Sequence[np.ndarray],
    pred_scores: Sequence[Mapping[int, float]],
    truth_labels: Sequence[np.ndarray],
    *,
    max_dets: int | None = MAX_DETS,
) -> CocoResult:
    """COCO instance mAP for instance-label rasters (0 = background, k > 0 = instance k).

    Image ``i`` pairs ``pred_labels[i]`` with ``truth_labels[i]``; images are visited in this
    order. Instances within an image keep the order of their labels (so equal scores are broken
    by label, as pycocotools breaks them by annotation order).

    Args:
        pred_labels: One predicted instance raster per image.
        pred_scores: One ``{label: score}`` mapping per image, covering every predicted label.
        truth_labels: One truth instance raster per image, each the shape of its prediction.
        max_dets: Per-image cap on predictions (pycocotools' default 100); None for no cap.

    Returns:
        AP, AP50, AP75 and AR.

    Raises:
        EvaluationError: If the lists differ in length, shapes differ, or a label has no score.
    """
    if not (len(pred_labels) == len(pred_scores) == len(truth_labels)):
        raise EvaluationError(
            f"{len(pred_labels)} prediction rasters, {len(pred_scores)} score mappings and "
            f"{len(truth_labels)} truth rasters: give one of each per image"
        )
    images = []
    for i, (pl, ps, tl) in enumerate(zip(pred_labels, pred_scores, truth_labels)):
        pred_ids, _, _, truth_area, pairs = label_ious(pl, tl)
        missing = [int(k) for k in pred_ids if int(k) not in ps]
        if missing:
            raise EvaluationError(
                f"image {i}: predicted instance label(s) {missing[:5]} have no score; "
                "give a score for every label in the raster"
            )
        scores = np.array([float(ps[int(k)]) for k in pred_ids], dtype=np.float64)
        images.append(ImageInstances(scores, len(truth_area), pairs))
    return coco_map(images, max_dets=max_dets)
