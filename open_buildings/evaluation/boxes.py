"""Box AP: COCO AP over axis-aligned boxes, as pycocotools' ``COCOeval(iouType="bbox")``.

Boxes are rectangles, so box AP is :mod:`open_buildings.evaluation.coco`'s instance AP with the
IoU of two boxes in place of the IoU of two polygons: the same greedy matching, thresholds,
recall points, per-image cap and accumulation (tested against pycocotools in
``tests/evaluation/test_boxes.py``). The IoU is computed as pycocotools' ``bbIou`` does:
``inter / (area_pred + area_truth - inter)``.

Boxes are ``(x0, y0, x1, y1)`` in any planar unit (pixels, metres); pycocotools takes
``(x, y, width, height)``, so convert with :func:`xywh_to_xyxy` when comparing.
"""

from __future__ import annotations

from dataclasses import replace

import geopandas as gpd
import numpy as np
import shapely

from open_buildings.errors import EvaluationError
from open_buildings.evaluation.coco import MAX_DETS, CocoResult, map_over_images
from open_buildings.evaluation.io import Footprints, metric_crs, to_crs
from open_buildings.evaluation.matching import Pairs

__all__ = ["box_ious", "box_map", "evaluate_boxes", "geometry_boxes", "xywh_to_xyxy"]


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """Convert ``(N, 4)`` boxes from ``(x, y, width, height)`` (COCO) to ``(x0, y0, x1, y1)``."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]], axis=1)


def geometry_boxes(geometries: np.ndarray) -> np.ndarray:
    """Return the ``(N, 4)`` bounding boxes ``(x0, y0, x1, y1)`` of shapely geometries."""
    geoms = np.asarray(geometries, dtype=object)
    if len(geoms) == 0:
        return np.zeros((0, 4))
    return shapely.bounds(geoms).astype(np.float64)


def _check_boxes(boxes: np.ndarray, what: str) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        return np.zeros((0, 4))
    if b.ndim != 2 or b.shape[1] != 4:
        raise EvaluationError(
            f"{what} boxes must be shaped (N, 4) as (x0, y0, x1, y1), got {b.shape}"
        )
    if not np.all(np.isfinite(b)):
        raise EvaluationError(f"{what} boxes hold NaN or inf coordinates")
    if np.any(b[:, 2] < b[:, 0]) or np.any(b[:, 3] < b[:, 1]):
        raise EvaluationError(
            f"{what} boxes must have x1 >= x0 and y1 >= y0; (x, y, w, h) boxes need xywh_to_xyxy"
        )
    return b


def box_ious(
    pred: np.ndarray,
    truth: np.ndarray,
    pred_image: np.ndarray | None = None,
    truth_image: np.ndarray | None = None,
) -> Pairs:
    """Compute the IoU of every overlapping (prediction, truth) pair of boxes.

    Candidate pairs come from an STRtree over the truth boxes, so memory grows with the
    overlapping pairs, not with ``len(pred) * len(truth)``.

    Args:
        pred: ``(N, 4)`` predicted boxes ``(x0, y0, x1, y1)``.
        truth: ``(M, 4)`` truth boxes.
        pred_image: Image id of each prediction; pairs across images are dropped. None: one image.
        truth_image: Image id of each truth box (required with ``pred_image``).

    Returns:
        The pairs with IoU > 0.

    Raises:
        EvaluationError: Malformed boxes, or ``pred_image`` without ``truth_image``.
    """
    p_box = _check_boxes(pred, "predicted")
    t_box = _check_boxes(truth, "truth")
    empty = np.zeros(0, dtype=np.int64)
    if len(p_box) == 0 or len(t_box) == 0:
        return Pairs(empty, empty.copy(), np.zeros(0))
    tree = shapely.STRtree(shapely.box(*t_box.T))
    p, t = tree.query(shapely.box(*p_box.T), predicate="intersects")
    if pred_image is not None:
        if truth_image is None:
            raise EvaluationError("box_ious: give truth_image along with pred_image")
        same = np.asarray(pred_image)[p] == np.asarray(truth_image)[t]
        p, t = p[same], t[same]
    a, b = p_box[p], t_box[t]
    w = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    h = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a + area_b - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    keep = iou > 0
    return Pairs(p[keep].astype(np.int64), t[keep].astype(np.int64), iou[keep])


def box_map(
    pred: np.ndarray,
    pred_scores: np.ndarray,
    truth: np.ndarray,
    *,
    pred_image: np.ndarray | None = None,
    truth_image: np.ndarray | None = None,
    max_dets: int | None = MAX_DETS,
) -> CocoResult:
    """COCO box AP (AP over IoU 0.50:0.05:0.95, AP50, AP75, AR) for one category.

    Args:
        pred: ``(N, 4)`` predicted boxes ``(x0, y0, x1, y1)``.
        pred_scores: ``(N,)`` their confidences.
        truth: ``(M, 4)`` truth boxes.
        pred_image: Image id of each prediction (None: all in one image).
        truth_image: Image id of each truth box (None: all in one image).
        max_dets: Per-image cap on predictions (pycocotools' default 100); None for no cap (a
            whole region evaluated as one image).

    Returns:
        AP, AP50, AP75 and AR, as pycocotools' ``COCOeval.summarize`` reports them.

    Raises:
        EvaluationError: Malformed boxes, or scores that do not match the predictions.
    """
    p_box = _check_boxes(pred, "predicted")
    t_box = _check_boxes(truth, "truth")
    scores = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
    if scores.shape != (len(p_box),):
        raise EvaluationError(f"{len(p_box)} predicted boxes but {scores.size} scores")
    if not np.all(np.isfinite(scores)):
        raise EvaluationError("prediction scores must be finite numbers (found NaN or inf)")
    p_img = np.zeros(len(p_box), dtype=np.int64) if pred_image is None else np.asarray(pred_image)
    t_img = np.zeros(len(t_box), dtype=np.int64) if truth_image is None else np.asarray(truth_image)
    if p_img.shape != (len(p_box),) or t_img.shape != (len(t_box),):
        raise EvaluationError("give one image id per box (pred_image, truth_image)")
    pairs = box_ious(p_box, t_box, p_img, t_img)
    return map_over_images(scores, p_img, t_img, pairs, max_dets=max_dets)


def evaluate_boxes(
    detections: gpd.GeoDataFrame, truth: Footprints, *, area: shapely.Geometry | None = None
) -> CocoResult:
    """Score detected boxes against building labels with COCO box AP.

    Each label becomes its bounding box, and each detection the bounding box of its geometry,
    both in one metric CRS (the labels' own if projected, else their UTM zone). The whole area is
    one image, so no cap on detections applies (as ``ob-eval`` does for regions).

    Args:
        detections: Boxes with a ``score`` column, in any CRS.
        truth: The labels (e.g. from :func:`open_buildings.evaluation.io.read_instances`).
        area: Only labels and detections whose centre lies in this lon/lat geometry count.

    Returns:
        AP, AP50, AP75 and AR.

    Raises:
        EvaluationError: The inputs have no CRS or the detections have no scores.
    """
    if detections.crs is None or truth.crs is None:
        raise EvaluationError("detections and labels need a CRS to be compared")
    if "score" not in detections:
        raise EvaluationError("the detections have no 'score' column")
    crs = metric_crs(truth)
    truth_m = to_crs(truth, crs)
    pred_m = detections.to_crs(crs)
    pred_geoms = np.asarray(pred_m.geometry.values, dtype=object)
    scores = pred_m["score"].to_numpy(dtype=np.float64)
    if area is not None:
        region = gpd.GeoSeries([area], crs=4326).to_crs(crs).iloc[0]
        keep_t = shapely.contains(region, shapely.centroid(truth_m.geometry))
        keep_p = shapely.contains(region, shapely.centroid(pred_geoms))
        truth_m = replace(truth_m, geometry=truth_m.geometry[keep_t])
        pred_geoms, scores = pred_geoms[keep_p], scores[keep_p]
    return box_map(
        geometry_boxes(pred_geoms), scores, geometry_boxes(truth_m.geometry), max_dets=None
    )
