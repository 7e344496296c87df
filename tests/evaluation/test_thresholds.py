"""Precision/recall curve and the thresholds reaching 80/85/90% precision, computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from open_buildings.errors import EvaluationError
from open_buildings.evaluation.thresholds import best_f1, pr_curve, precision_thresholds


def test_curve_one_point_per_distinct_score() -> None:
    scores = np.array([0.9, 0.8, 0.8, 0.5, 0.3])
    matched = np.array([True, True, False, True, False])
    c = pr_curve(scores, matched, n_truth=4)
    assert c.thresholds.tolist() == [0.9, 0.8, 0.5, 0.3]
    assert c.tp.tolist() == [1, 2, 3, 3]
    assert c.n_pred.tolist() == [1, 3, 4, 5]
    assert c.precision.tolist() == [1.0, 2 / 3, 3 / 4, 3 / 5]
    assert c.recall.tolist() == [0.25, 0.5, 0.75, 0.75]


def test_lowest_threshold_reaching_each_precision() -> None:
    # precision by threshold: .9 -> 1.0, .8 -> .667, .5 -> .75, .3 -> .6 (not monotone)
    c = pr_curve(np.array([0.9, 0.8, 0.8, 0.5, 0.3]), np.array([1, 1, 0, 1, 0], bool), 4)
    p70, p80, p100 = precision_thresholds(c, (0.7, 0.8, 1.0))
    assert (p70.threshold, p70.precision, p70.recall) == (0.5, 0.75, 0.75)  # not 0.9: lowest
    assert (p80.threshold, p80.recall) == (0.9, 0.25)
    assert (p100.threshold, p100.precision) == (0.9, 1.0)


def test_unreachable_is_none_with_a_note() -> None:
    c = pr_curve(np.array([0.9, 0.5]), np.array([False, True]), 2)
    (p,) = precision_thresholds(c, (0.9,))
    assert (
        p.threshold is None and p.recall is None and "unreachable" in p.note and "50.0%" in p.note
    )
    (p,) = precision_thresholds(pr_curve(np.zeros(0), np.zeros(0, bool), 3), (0.8,))
    assert p.threshold is None and p.note == "no predictions"


def test_mismatched_lengths() -> None:
    with pytest.raises(EvaluationError):
        pr_curve(np.ones(2), np.ones(3, bool), 1)


def test_best_f1_by_hand() -> None:
    # Scores 0.9 (TP), 0.8 (TP), 0.3 (FP), 0.2 (FP); 3 truth buildings.
    # At >= 0.8: P 2/2, R 2/3, F1 0.8. At >= 0.3: P 2/3, R 2/3, F1 2/3. At >= 0.9: F1 0.5.
    curve = pr_curve(np.array([0.9, 0.8, 0.3, 0.2]), np.array([True, True, False, False]), 3)
    best = best_f1(curve)
    assert best == pytest.approx({"threshold": 0.8, "precision": 1.0, "recall": 2 / 3, "f1": 0.8})


def test_best_f1_of_nothing() -> None:
    assert best_f1(pr_curve(np.array([]), np.array([], dtype=bool), 3)) is None


def test_at_threshold_is_the_score_of_the_predictions_kept() -> None:
    from open_buildings.evaluation.thresholds import at_threshold

    # scores 0.9 (TP), 0.8 (FP), 0.7 (TP), 0.6 (FP); 4 truth instances
    curve = pr_curve(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0], bool), 4)
    kept = at_threshold(curve, 0.75)  # 0.9 and 0.8: one TP of two
    assert kept == {
        "threshold": 0.75,
        "precision": 0.5,
        "recall": 0.25,
        "f1": pytest.approx(1 / 3),
        "n_pred": 2,
    }
    assert at_threshold(curve, 0.7)["n_pred"] == 3 and at_threshold(curve, 0.7)["recall"] == 0.5
    assert at_threshold(curve, 0.95) == {
        "threshold": 0.95,
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "n_pred": 0,
    }
