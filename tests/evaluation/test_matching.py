"""IoU and greedy matching, on cases small enough to work out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from open_buildings.errors import EvaluationError
from open_buildings.evaluation.matching import greedy_match, label_ious, polygon_ious


def test_polygon_ious_by_hand() -> None:
    pred = np.array([shapely.box(0, 0, 2, 2), shapely.box(10, 10, 11, 11), shapely.box(2, 0, 3, 1)])
    truth = np.array([shapely.box(1, 0, 3, 2)])
    pairs = polygon_ious(pred, truth)
    # box(0,0,2,2) vs box(1,0,3,2): 2 / 6; the touching-edge and far boxes give no pair...
    # ...except box(2,0,3,1), which lies inside the truth: 1 / 4
    assert pairs.pred.tolist() == [0, 2]
    assert pairs.iou.tolist() == [2 / 6, 1 / 4]


def test_polygon_ious_stay_within_an_image() -> None:
    a = shapely.box(0, 0, 1, 1)
    pairs = polygon_ious(np.array([a, a]), np.array([a]), np.array([1, 2]), np.array([2]))
    assert pairs.pred.tolist() == [1] and pairs.iou.tolist() == [1.0]


def test_label_ious_by_hand() -> None:
    pred = np.array([[1, 1, 0], [0, 7, 7]])
    truth = np.array([[4, 4, 4], [0, 0, 4]])
    pid, parea, tid, tarea, pairs = label_ious(pred, truth)
    assert pid.tolist() == [1, 7] and parea.tolist() == [2, 2]
    assert tid.tolist() == [4] and tarea.tolist() == [4]
    assert pairs.pred.tolist() == [0, 1] and pairs.iou.tolist() == [2 / 4, 1 / 5]
    with pytest.raises(EvaluationError, match="shape"):
        label_ious(pred, truth[:1])
    with pytest.raises(EvaluationError, match="integers"):
        label_ious(pred.astype(float), truth)


def test_greedy_ties_first_or_last() -> None:
    a = shapely.box(0, 0, 2, 1)
    truth = np.array([a, a])
    pairs = polygon_ious(np.array([a]), truth)
    first = greedy_match(np.array([1.0]), 2, pairs, [0.5], ties="first")
    last = greedy_match(np.array([1.0]), 2, pairs, [0.5], ties="last")
    assert first.truth.tolist() == [[0]] and last.truth.tolist() == [[1]]


def test_greedy_thresholds_and_max_dets() -> None:
    t = shapely.box(0, 0, 10, 10)
    preds = np.array([shapely.box(0, 0, 10, 7), shapely.box(0, 0, 10, 10)])  # IoU .7 and 1
    pairs = polygon_ious(preds, np.array([t]))
    m = greedy_match(np.array([0.9, 0.1]), 1, pairs, [0.5, 0.75])
    assert m.order.tolist() == [0, 1]
    assert m.truth.tolist() == [[0, -1], [-1, 0]]  # at .75 the better, less confident one wins
    capped = greedy_match(np.array([0.9, 0.1]), 1, pairs, [0.75], max_dets=1)
    assert capped.order.tolist() == [0] and capped.truth.tolist() == [[-1]]
