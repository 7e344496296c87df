"""Box AP agrees with pycocotools' ``COCOeval(iouType="bbox")``; box IoUs are exact."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from evalref import _coco, _run

from open_buildings.errors import EvaluationError
from open_buildings.evaluation.boxes import box_ious, box_map, geometry_boxes, xywh_to_xyxy
from open_buildings.evaluation.coco import CocoResult

STAT = {"ap": 0, "ap50": 1, "ap75": 2, "ar": 8}


def pycoco_boxes(
    truth: list[np.ndarray], pred: list[np.ndarray], scores: list[np.ndarray]
) -> np.ndarray:
    """pycocotools ``stats`` for per-image (x, y, w, h) boxes (image i has id i + 1)."""
    images, gts, dts = [], [], []
    for i, (tb, pb, ss) in enumerate(zip(truth, pred, scores, strict=True)):
        images.append({"id": i + 1, "height": 100, "width": 100})
        for b in tb:
            gts.append(
                {
                    "id": len(gts) + 1,
                    "image_id": i + 1,
                    "category_id": 1,
                    "bbox": [float(v) for v in b],
                    "area": float(b[2] * b[3]),
                    "iscrowd": 0,
                }
            )
        for b, s in zip(pb, ss, strict=True):
            dts.append(
                {
                    "id": len(dts) + 1,
                    "image_id": i + 1,
                    "category_id": 1,
                    "bbox": [float(v) for v in b],
                    "area": float(b[2] * b[3]),
                    "iscrowd": 0,
                    "score": float(s),
                }
            )
    return _run(_coco(images, gts), _coco(images, dts), "bbox")


def ours(truth: list[np.ndarray], pred: list[np.ndarray], scores: list[np.ndarray]) -> CocoResult:
    """Our box AP on the same per-image (x, y, w, h) boxes."""
    p_img = np.concatenate([np.full(len(b), i) for i, b in enumerate(pred)])
    t_img = np.concatenate([np.full(len(b), i) for i, b in enumerate(truth)])
    return box_map(
        xywh_to_xyxy(np.concatenate(pred)),
        np.concatenate(scores),
        xywh_to_xyxy(np.concatenate(truth)),
        pred_image=p_img,
        truth_image=t_img,
    )


def assert_agrees(result: CocoResult, stats: np.ndarray) -> None:
    for name, i in STAT.items():
        value, expected = getattr(result, name), float(stats[i])
        if expected == -1:
            assert value is None, (name, value)
        else:
            assert value is not None and abs(value - expected) <= 1e-9, (name, value, expected)


def random_image(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truth boxes, predictions (half of them jittered copies of truth), and scores."""
    n_truth = int(rng.integers(0, 10))
    truth = np.column_stack([rng.uniform(0, 80, (n_truth, 2)), rng.uniform(2, 20, (n_truth, 2))])
    pred = []
    for _ in range(int(rng.integers(0, 14))):
        if n_truth and rng.random() < 0.6:
            base = truth[rng.integers(n_truth)]
            jitter = rng.normal(0, 0.15, 4) * np.r_[base[2:], base[2:]]
            pred.append(np.maximum(base + jitter, [0, 0, 0.5, 0.5]))
        else:
            pred.append(np.r_[rng.uniform(0, 80, 2), rng.uniform(2, 20, 2)])
    pred_arr = np.array(pred).reshape(-1, 4)
    scores = (
        rng.choice([0.25, 0.5, 0.75], len(pred_arr))
        if rng.random() < 0.3
        else rng.random(len(pred_arr))
    )
    return truth.reshape(-1, 4), pred_arr, scores


@pytest.mark.parametrize("seed", range(25))
def test_box_ap_matches_pycocotools(seed: int) -> None:
    rng = np.random.default_rng(seed)
    images = [random_image(rng) for _ in range(int(rng.integers(1, 5)))]
    truth, pred, scores = (list(x) for x in zip(*images, strict=True))
    if sum(len(t) for t in truth) == 0:  # pycocotools reports -1; we report None
        truth[0] = np.array([[1.0, 1.0, 5.0, 5.0]])
    assert_agrees(ours(truth, pred, scores), pycoco_boxes(truth, pred, scores))


def test_more_than_100_detections_are_capped_like_pycocotools() -> None:
    rng = np.random.default_rng(7)
    truth = np.column_stack([rng.uniform(0, 90, (40, 2)), rng.uniform(2, 10, (40, 2))])
    pred = np.concatenate([truth + rng.normal(0, 0.3, truth.shape), truth[:5].repeat(30, 0)])
    scores = rng.random(len(pred))
    stats = pycoco_boxes([truth], [pred], [scores])
    result = ours([truth], [pred], [scores])
    assert result.n_pred == 100
    assert_agrees(result, stats)


def test_box_iou_by_hand() -> None:
    pred = np.array([[0, 0, 2, 2], [1, 1, 3, 3], [5, 5, 6, 6], [2, 0, 4, 2]], dtype=float)
    truth = np.array([[0, 0, 2, 2]], dtype=float)
    pairs = box_ious(pred, truth)
    got = {int(p): float(v) for p, v in zip(pairs.pred, pairs.iou, strict=True)}
    # identical: 1; shifted by (1, 1): 1 / (4 + 4 - 1); disjoint and edge-touching: absent
    assert got == {0: 1.0, 1: 1 / 7}


def test_shifted_boxes_give_the_expected_ap() -> None:
    # every prediction is its truth box shifted right by a fifth of its width: IoU 0.8/1.2 = 2/3,
    # matched at IoU thresholds 0.50, 0.55, 0.60 and 0.65 only: AP = 4/10, AP50 = 1, AP75 = 0
    truth = np.array([[10.0 * i, 0, 10.0 * i + 5, 8] for i in range(6)])
    shifted = truth + np.array([1.0, 0, 1.0, 0])
    result = box_map(shifted, np.linspace(0.9, 0.4, 6), truth)
    assert result.ap50 == pytest.approx(1.0)
    assert result.ap75 == 0.0
    assert result.ap == pytest.approx(0.4)
    assert box_map(truth, np.ones(6), truth).ap == pytest.approx(1.0)


def test_geometry_boxes_are_bounds() -> None:
    polygons = np.array([shapely.Polygon([(0, 0), (3, 1), (1, 4)]), shapely.box(5, 6, 7, 9)])
    assert geometry_boxes(polygons).tolist() == [[0, 0, 3, 4], [5, 6, 7, 9]]
    assert geometry_boxes(np.array([], dtype=object)).shape == (0, 4)


def test_bad_inputs_are_clear_errors() -> None:
    box = np.array([[0.0, 0, 1, 1]])
    with pytest.raises(EvaluationError, match="x1 >= x0"):
        box_map(np.array([[2.0, 0, 1, 1]]), [0.5], box)
    with pytest.raises(EvaluationError, match="1 predicted boxes but 2 scores"):
        box_map(box, [0.5, 0.1], box)
    with pytest.raises(EvaluationError, match=r"\(N, 4\)"):
        box_map(np.zeros((1, 3)), [0.5], box)
    with pytest.raises(EvaluationError, match="NaN"):
        box_map(box, [float("nan")], box)
    assert box_map(box, [0.5], np.zeros((0, 4))).ap is None
