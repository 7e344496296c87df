"""Precision/recall over confidence thresholds, and the thresholds that reach a target precision.

Open Buildings publishes, per region, the confidence threshold at which footprints reach 80%, 85%
and 90% precision. Here:

- The **curve** comes from the SpaceNet matching at IoU 0.5 (one-to-one, greedy in order of
  decreasing confidence; see :mod:`open_buildings.evaluation.spacenet`). Because the matching is
  greedy in confidence order, keeping only the predictions with ``score >= s`` matches exactly the
  same pairs among them, so one matching gives the whole curve. There is one point per distinct
  score ``s``: precision and recall of the predictions with ``score >= s``.
- The **threshold for a target precision** is the *lowest* ``s`` at which precision ``>=`` the
  target: the most recall that still meets the target. Precision need not fall monotonically as
  ``s`` falls, so this is a search over the whole curve, not the first crossing. If no ``s``
  reaches the target the threshold is None, with a note saying so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from open_buildings.errors import EvaluationError

#: The precisions Open Buildings publishes thresholds for.
TARGET_PRECISIONS = (0.80, 0.85, 0.90)


@dataclass(frozen=True)
class PRCurve:
    """Precision and recall of the predictions with ``score >= threshold``, per threshold.

    Attributes:
        thresholds: The distinct scores, decreasing.
        precision: Precision at each threshold.
        recall: Recall at each threshold.
        tp: True positives at each threshold.
        n_pred: Predictions kept at each threshold.
        n_truth: Truth instances (the recall denominator).
    """

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    tp: np.ndarray
    n_pred: np.ndarray
    n_truth: int


@dataclass(frozen=True)
class ThresholdPoint:
    """The confidence threshold reaching a target precision.

    Attributes:
        target: The target precision.
        threshold: The lowest score whose predictions reach it, or None if none does.
        precision: Precision at that threshold (None if unreachable).
        recall: Recall at that threshold (None if unreachable).
        note: Why the threshold is None, or "".
    """

    target: float
    threshold: float | None
    precision: float | None
    recall: float | None
    note: str = ""


def pr_curve(scores: np.ndarray, matched: np.ndarray, n_truth: int) -> PRCurve:
    """Build the precision/recall curve from one greedy matching.

    Args:
        scores: Confidence of each prediction.
        matched: Whether each prediction was matched (a true positive).
        n_truth: Number of truth instances.

    Returns:
        One point per distinct score, highest first.

    Raises:
        EvaluationError: If the arrays differ in length.
    """
    scores = np.asarray(scores, dtype=np.float64)
    matched = np.asarray(matched, dtype=bool)
    if scores.shape != matched.shape:
        raise EvaluationError(f"{scores.size} scores but {matched.size} match flags")
    order = np.argsort(-scores, kind="mergesort")
    s, m = scores[order], matched[order]
    tp = np.cumsum(m)
    n = np.arange(1, len(s) + 1)
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True]) if len(s) else np.zeros(0, dtype=int)
    tp, n = tp[last], n[last]
    precision = tp / n
    recall = tp / n_truth if n_truth > 0 else np.zeros(len(tp))
    return PRCurve(s[last], precision, recall, tp, n, n_truth)


def precision_thresholds(
    curve: PRCurve, targets: Sequence[float] = TARGET_PRECISIONS
) -> list[ThresholdPoint]:
    """Find the lowest confidence threshold reaching each target precision.

    Args:
        curve: The precision/recall curve.
        targets: Target precisions in (0, 1].

    Returns:
        One point per target, in the order given.
    """
    out = []
    for target in targets:
        reach = np.flatnonzero(curve.precision >= target)
        if curve.n_truth == 0:
            out.append(ThresholdPoint(target, None, None, None, "no truth: precision is undefined"))
        elif len(curve.thresholds) == 0:
            out.append(ThresholdPoint(target, None, None, None, "no predictions"))
        elif len(reach) == 0:
            best = float(curve.precision.max())
            out.append(
                ThresholdPoint(
                    target,
                    None,
                    None,
                    None,
                    f"unreachable: the highest precision at any threshold is {best:.1%}",
                )
            )
        else:
            i = int(reach[-1])
            out.append(
                ThresholdPoint(
                    target,
                    float(curve.thresholds[i]),
                    float(curve.precision[i]),
                    float(curve.recall[i]),
                )
            )
    return out


def best_f1(curve: PRCurve) -> dict[str, float] | None:
    """Return the operating point with the highest F1 on the PR curve (IoU 0.5 matching).

    Keeping only predictions with ``score >= threshold`` gives this precision, recall and F1;
    it is the figure to compare with published F1 scores that were taken at a tuned threshold.

    Args:
        curve: From :func:`pr_curve`.

    Returns:
        ``{"threshold", "precision", "recall", "f1"}``, or None for an empty curve.
    """
    if len(curve.thresholds) == 0:
        return None
    p, r = curve.precision, curve.recall
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
    i = int(np.argmax(f1))
    return {
        "threshold": float(curve.thresholds[i]),
        "precision": float(p[i]),
        "recall": float(r[i]),
        "f1": float(f1[i]),
    }


def at_threshold(curve: PRCurve, threshold: float) -> dict[str, float]:
    """Return precision, recall and F1 of the predictions with ``score >= threshold``.

    One greedy matching gives every threshold's pairs (see the module's docstring), so this is
    exactly what scoring only those predictions would give.

    Args:
        curve: From :func:`pr_curve`.
        threshold: The confidence floor.

    Returns:
        ``{"threshold", "precision", "recall", "f1", "n_pred"}``; all zero when nothing is kept.
    """
    kept = np.flatnonzero(curve.thresholds >= threshold)
    if len(kept) == 0:
        return {"threshold": threshold, "precision": 0.0, "recall": 0.0, "f1": 0.0, "n_pred": 0}
    i = int(kept[-1])
    p, r = float(curve.precision[i]), float(curve.recall[i])
    f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return {
        "threshold": threshold,
        "precision": p,
        "recall": r,
        "f1": f1,
        "n_pred": int(curve.n_pred[i]),
    }
