"""Operating points: the confidence thresholds a model should be run at, measured, not guessed.

A model's raw output keeps every instance the decoder finds, most of them false positives at low
confidence. :func:`operating_points` scores the model on labelled scenes it never trained on, the
way ``ob-infer`` writes footprints (:func:`.validate.score_scenes`), and reads off the
precision/recall curve the threshold with the best SpaceNet F1 and the lowest thresholds that
reach 80, 85 and 90% precision (``evaluation.thresholds``), as Open Buildings publishes them.
``ob-train`` stores them in every checkpoint it writes when it has validation areas, and
``ob-calibrate`` adds them to any checkpoint; ``ob-infer --min-confidence auto`` (the default)
applies the best-F1 threshold. :func:`input_ranges` records what the training imagery looked
like (``pipelines.domain``), so that ``ob-infer`` can warn about tiles that look different.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from open_buildings.errors import EvaluationError
from open_buildings.evaluation.evaluate import Evaluation
from open_buildings.evaluation.thresholds import TARGET_PRECISIONS, best_f1, precision_thresholds
from open_buildings.geo.grid import GridSpec
from open_buildings.models.base import BuildingModel
from open_buildings.pipelines.domain import input_ranges as domain_ranges
from open_buildings.pipelines.domain import tile_stats
from open_buildings.pipelines.runtime import run_model
from open_buildings.training.scenes import Scene
from open_buildings.training.validate import score_scenes


def operating_points(
    model: BuildingModel,
    scenes: Sequence[Scene],
    *,
    measured_on: str,
    spec: GridSpec | None = None,
    targets: Sequence[float] = TARGET_PRECISIONS,
    scored: Evaluation | None = None,
) -> dict[str, Any]:
    """Measure a model's operating points on labelled scenes.

    Args:
        model: the model.
        scenes: labelled scenes the model never trained on.
        measured_on: what the scenes are, for the record (e.g. ``"Nairobi, 180 OSM buildings"``).
        spec: the grid the scenes were read on.
        targets: the precisions to find thresholds for.
        scored: the model's :func:`.validate.score_scenes` result on ``scenes``, when the caller
            already has it (the last validation of a training run).

    Returns:
        ``{"best_f1": {"threshold", "precision", "recall", "f1"}, "precision_targets": [{"target",
        "threshold", "precision", "recall", "note"}, ...], "measured_on", "n_truth", "n_pred",
        "ap50"}``; a target's threshold is None (with the note saying why) when unreachable.

    Raises:
        EvaluationError: the model finds no building at any threshold.
        ValueError: no scene is labelled.
    """
    result = scored or score_scenes(model, scenes, spec=spec)
    best = best_f1(result.curve)
    if best is None:
        raise EvaluationError(
            f"the model finds no building in {measured_on}, so there is nothing to calibrate; "
            "train it further, or calibrate on imagery with buildings"
        )
    return {
        "best_f1": best,
        "precision_targets": [
            {
                "target": p.target,
                "threshold": p.threshold,
                "precision": p.precision,
                "recall": p.recall,
                "note": p.note,
            }
            for p in precision_thresholds(result.curve, targets)
        ],
        "measured_on": measured_on,
        "n_truth": result.n_truth,
        "n_pred": result.n_pred,
        "ap50": result.coco.ap50,
    }


def input_ranges(
    model: BuildingModel, scenes: Sequence[Scene], *, measured_on: str
) -> dict[str, Any]:
    """Measure the ranges of the tile statistics ``ob-infer`` checks, on training imagery.

    Args:
        model: the model (its building share per tile is one of the statistics).
        scenes: the tiles it was trained on (labels are not needed).
        measured_on: what the scenes are, for the record.

    Returns:
        ``{"ranges": {stat: [low, high]}, "measured_on", "tiles"}`` (``pipelines.domain``).

    Raises:
        ValueError: if no scene has imagery.
    """
    stats = [
        tile_stats(scene.rgb, scene.valid, run_model(model, [scene.rgb])[0]) for scene in scenes
    ]
    return {
        "ranges": domain_ranges(stats),
        "measured_on": measured_on,
        "tiles": sum(1 for s in stats if s),
    }
