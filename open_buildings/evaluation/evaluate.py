"""Score predictions against truth with every metric at once (the core of ``ob-eval``)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import shapely

from open_buildings.evaluation import io, region_clip
from open_buildings.evaluation.coco import MAX_DETS, CocoResult, polygon_map
from open_buildings.evaluation.io import EvaluationWarning, Footprints
from open_buildings.evaluation.matching import polygon_ious
from open_buildings.evaluation.spacenet import F1Result, spacenet_f1
from open_buildings.evaluation.thresholds import (
    TARGET_PRECISIONS,
    PRCurve,
    ThresholdPoint,
    pr_curve,
    precision_thresholds,
)


@dataclass(frozen=True)
class Evaluation:
    """Everything ``ob-eval`` reports.

    Attributes:
        coco: COCO instance mAP (AP, AP50, AP75, AR).
        f1: SpaceNet F1 at IoU 0.5, overall and per image.
        curve: Precision/recall over confidence thresholds (IoU 0.5 matching).
        thresholds: Confidence thresholds reaching the target precisions.
        crs: The CRS the polygons were compared in ("pixels" for SpaceNet pixel coordinates).
        n_pred: Predictions evaluated.
        n_truth: Truth polygons evaluated.
        notes: Things the reader should know (caps, missing scores, no overlap...).
    """

    coco: CocoResult
    f1: F1Result
    curve: PRCurve
    thresholds: list[ThresholdPoint]
    crs: str
    n_pred: int
    n_truth: int
    notes: list[str] = field(default_factory=list)


def evaluate(
    pred: Footprints,
    truth: Footprints,
    *,
    crs_name: str = "",
    targets: tuple[float, ...] = TARGET_PRECISIONS,
    min_area: float = 0.0,
    cap_per_image: bool = True,
) -> Evaluation:
    """Compute COCO mAP, SpaceNet F1 and the precision thresholds for one PRED/TRUTH pair.

    Both must already be in one planar CRS (see :func:`open_buildings.evaluation.io.to_common_crs`).
    If either has image ids, polygons are only compared within an image and COCO's per-image
    cap of 100 detections applies; otherwise the whole input is one area and there is no cap.

    Args:
        pred: Predictions (scores optional: without them every score is 1.0).
        truth: Ground truth.
        crs_name: Name of the CRS, for the report.
        targets: Precisions to find thresholds for.
        min_area: SpaceNet ``min_area`` (in the CRS's units squared).
        cap_per_image: apply COCO's 100 detections per image when there are image ids; False
            when each "image" is a whole area (see :func:`evaluate_areas`).

    Returns:
        All the metrics.
    """
    notes: list[str] = []
    scores = pred.score
    if scores is None:
        scores = np.ones(len(pred))
        notes.append("PRED has no confidence: every score is 1.0, so AP and thresholds are moot")
    has_images = pred.image_id is not None or truth.image_id is not None
    p_img = _ids(pred)
    t_img = _ids(truth)
    capped = has_images and cap_per_image
    max_dets = MAX_DETS if capped else None
    notes.append(
        f"COCO maxDets = {MAX_DETS} per image (pycocotools' default)"
        if capped
        else "COCO AP over whole areas: no maxDets cap"
    )
    pairs = polygon_ious(pred.geometry, truth.geometry, p_img, t_img)
    if len(pred) and len(truth) and len(pairs) == 0:
        msg = _no_overlap(pred, truth)
        warnings.warn(msg, EvaluationWarning, stacklevel=2)
        notes.append(msg)
    if len(pred) == 0:
        notes.append("PRED is empty: recall is 0")
    f1 = spacenet_f1(
        pred.geometry,
        scores,
        truth.geometry,
        pred_image=p_img,
        truth_image=t_img,
        min_area=min_area,
        pairs=pairs,
    )
    coco = polygon_map(
        pred.geometry,
        scores,
        truth.geometry,
        pred_image=p_img,
        truth_image=t_img,
        max_dets=max_dets,
        pairs=pairs,
    )
    area = shapely.area(pred.geometry) if len(pred) else np.zeros(0)
    kept = np.flatnonzero((area > min_area) & (area > 0))
    matched = np.isin(kept, f1.matches[0])
    n_truth = f1.total.tp + f1.total.fn
    curve = pr_curve(scores[kept], matched, n_truth)
    return Evaluation(
        coco=coco,
        f1=f1,
        curve=curve,
        thresholds=precision_thresholds(curve, targets),
        crs=crs_name,
        n_pred=len(pred),
        n_truth=len(truth),
        notes=notes,
    )


def _ids(fp: Footprints) -> np.ndarray:
    if fp.image_id is None:
        return np.full(len(fp), "", dtype=object)
    return fp.image_id.astype(object)


def _no_overlap(pred: Footprints, truth: Footprints) -> str:
    pb = shapely.total_bounds(pred.geometry)
    tb = shapely.total_bounds(truth.geometry)
    apart = pb[2] < tb[0] or tb[2] < pb[0] or pb[3] < tb[1] or tb[3] < pb[1]
    where = "their extents do not even meet" if apart else "their extents meet, no polygons do"
    return (
        f"PRED and TRUTH do not overlap at all ({where}; PRED bounds "
        f"{tuple(round(float(v), 1) for v in pb)}, TRUTH bounds "
        f"{tuple(round(float(v), 1) for v in tb)}): wrong files, CRS or region? Every score is 0"
    )


def evaluate_files(
    pred_path: str,
    truth_path: str,
    *,
    region_path: str | None = None,
    min_area: float = 0.0,
    skip_bad: bool = False,
    by_centroid: bool = False,
) -> Evaluation:
    """Read, align, clip and score PRED against TRUTH.

    Args:
        pred_path: Predictions.
        truth_path: Ground truth.
        region_path: Optional region GeoJSON to clip both to.
        min_area: SpaceNet ``min_area``.
        skip_bad: skip damaged shard rows/files and polygons with NaN vertices, with a warning,
            instead of raising.
        by_centroid: keep only the footprints whose centroid lies in the region, on both sides,
            before cutting them at its edge (``ob-infer``'s rule; see :func:`evaluate_areas`).

    Returns:
        The evaluation.
    """
    pred, truth, crs = _read_area(pred_path, truth_path, region_path, skip_bad, by_centroid)
    crs_name = "pixels" if crs is None else io.crs_name(crs)
    return evaluate(pred, truth, crs_name=crs_name, min_area=min_area)


def _read_area(
    pred_path: str,
    truth_path: str,
    region_path: str | None,
    skip_bad: bool = False,
    by_centroid: bool = False,
) -> tuple[Footprints, Footprints, object]:
    pred, truth = io.read_pair(pred_path, truth_path, skip_bad=skip_bad)
    pred, truth, crs = io.to_common_crs(pred, truth)
    if region_path:
        from open_buildings.geo import regions

        region = region_clip.region_in(regions.read_region(region_path).geometry, crs)
        for keep in ([region_clip.centroid_in] if by_centroid else []) + [region_clip.clip]:
            pred, truth = keep(pred, region), keep(truth, region)
    return pred, truth, crs


def evaluate_areas(
    areas: list[tuple[str, str, str | None]],
    *,
    min_area: float = 0.0,
    by_centroid: bool = False,
) -> Evaluation:
    """Score several areas at once, each in its own metric CRS, as one pooled evaluation.

    Every area is read, aligned and clipped as :func:`evaluate_files` does; polygons are then
    matched only within their area, and the PR curve, F1 and AP pool all matches (no COCO
    per-image cap: an area is not a 100-object image).

    Args:
        areas: ``(pred_path, truth_path, region_path or None)`` per area.
        min_area: SpaceNet ``min_area``.
        by_centroid: keep, on both sides, only the footprints whose centroid lies in the region
            (``ob-infer``'s rule) before cutting them at its edge; for scoring ob-infer's output.

    Returns:
        The pooled evaluation; ``f1.per_image`` holds each area's F1, in order.
    """
    preds, truths = [], []
    for index, (pred_path, truth_path, region_path) in enumerate(areas):
        pred, truth, _ = _read_area(pred_path, truth_path, region_path, by_centroid=by_centroid)
        preds.append(_in_image(pred, index))
        truths.append(_in_image(truth, index))
    return evaluate(
        io.concat(preds),
        io.concat(truths),
        crs_name="each area's UTM zone",
        min_area=min_area,
        cap_per_image=False,
    )


def _in_image(fp: Footprints, index: int) -> Footprints:
    return replace(fp, image_id=np.full(len(fp), index, dtype=int))
