"""Shared by the evaluation tests: pycocotools as the independent reference, fixture paths."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

METRICS = Path(__file__).resolve().parents[1] / "data" / "metrics"


def _coco(images: list[dict], annotations: list[dict]) -> COCO:
    coco = COCO()
    coco.dataset = {
        "images": images,
        "categories": [{"id": 1, "name": "building"}],
        "annotations": annotations,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def pycoco_masks(
    truth: Sequence[Sequence[np.ndarray]],
    pred: Sequence[Sequence[np.ndarray]],
    scores: Sequence[Sequence[float]],
) -> np.ndarray:
    """pycocotools ``COCOeval(iouType="segm")`` ``stats`` for per-image lists of binary masks.

    Image ``i`` gets id ``i + 1``; annotations are added in list order (ids from 1, as
    pycocotools needs ids > 0). The detections COCO is built like ``loadRes`` builds it (area
    and bbox from the RLE) but directly, so that a run with no detections at all works too.
    """
    images, gts, dts = [], [], []
    for i, (tms, pms, ss) in enumerate(zip(truth, pred, scores)):
        h, w = (tms[0] if len(tms) else pms[0] if len(pms) else np.zeros((1, 1))).shape
        images.append({"id": i + 1, "height": h, "width": w})
        for m in tms:
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            gts.append(
                {
                    "id": len(gts) + 1,
                    "image_id": i + 1,
                    "category_id": 1,
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle)),
                    "bbox": mask_utils.toBbox(rle).tolist(),
                    "iscrowd": 0,
                }
            )
        for m, s in zip(pms, ss):
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            dts.append(
                {
                    "id": len(dts) + 1,
                    "image_id": i + 1,
                    "category_id": 1,
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle)),
                    "bbox": mask_utils.toBbox(rle).tolist(),
                    "iscrowd": 0,
                    "score": float(s),
                }
            )
    return _run(_coco(images, gts), _coco(images, dts), "segm")


def _run(gt: COCO, dt: COCO, iou_type: str, ious: Callable | None = None) -> np.ndarray:
    ev = COCOeval(gt, dt, iou_type)
    if ious is not None:
        ev.computeIoU = ious
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)


def pycoco_given_ious(
    n_truth: Sequence[int],
    scores: Sequence[Sequence[float]],
    iou_of: Callable[[int, np.ndarray, np.ndarray], np.ndarray],
) -> np.ndarray:
    """pycocotools ``COCOeval`` stats with its ``computeIoU`` replaced by ``iou_of``.

    ``iou_of(image_index, dt_local_ids, gt_local_ids)`` returns the dense IoU matrix of the
    given detections (in pycocotools' order: by score, capped at maxDets) and truth. This runs
    pycocotools' own matching and accumulation on exactly the polygon IoUs, with no rasterizing.
    """
    images, gts, dts = [], [], []
    for i, (n, ss) in enumerate(zip(n_truth, scores)):
        images.append({"id": i + 1, "height": 1, "width": 1})
        for k in range(n):
            gts.append(
                {
                    "id": len(gts) + 1,
                    "image_id": i + 1,
                    "category_id": 1,
                    "area": 1.0,
                    "bbox": [0, 0, 1, 1],
                    "iscrowd": 0,
                    "local": k,
                }
            )
        for k, s in enumerate(ss):
            dts.append(
                {
                    "id": len(dts) + 1,
                    "image_id": i + 1,
                    "category_id": 1,
                    "area": 1.0,
                    "bbox": [0, 0, 1, 1],
                    "iscrowd": 0,
                    "score": float(s),
                    "local": k,
                }
            )
    gt, dt = _coco(images, gts), _coco(images, dts)
    ev_holder: dict[str, COCOeval] = {}

    def compute(img_id: int, cat_id: int) -> np.ndarray | list:
        ev = ev_holder["ev"]
        g = ev._gts[img_id, cat_id]
        d = ev._dts[img_id, cat_id]
        if len(g) == 0 and len(d) == 0:
            return []
        order = np.argsort([-x["score"] for x in d], kind="mergesort")
        d = [d[j] for j in order][: ev.params.maxDets[-1]]
        return iou_of(
            img_id - 1,
            np.array([x["local"] for x in d], dtype=int),
            np.array([x["local"] for x in g], dtype=int),
        )

    ev = COCOeval(gt, dt, "bbox")
    ev_holder["ev"] = ev
    ev.computeIoU = compute
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)
