"""Validation during training: predict whole scenes and score them with the evaluation module.

Predictions and labels go through ``ob-infer``'s own functions: the model runs through
:func:`open_buildings.pipelines.runtime.run_model` (the pipeline's padding, fp32 unless bf16 is
asked for), and both sides through :func:`open_buildings.pipelines.postprocess.owned_footprints`
(no imagery -> no building; a building counts only in the tile that owns its centroid). Then COCO
mAP and SpaceNet F1 (``ob-eval``'s) in the scene's metric CRS.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pyproj import CRS

from open_buildings.evaluation.evaluate import Evaluation, evaluate
from open_buildings.evaluation.io import Footprints
from open_buildings.evaluation.thresholds import best_f1
from open_buildings.geo.grid import GridSpec, Tile
from open_buildings.models import heads
from open_buildings.models.base import BuildingModel
from open_buildings.pipelines.postprocess import owned_footprints
from open_buildings.pipelines.runtime import run_model
from open_buildings.training.scenes import Scene


def predict(model: BuildingModel, rgb: np.ndarray, *, bf16: bool = False) -> np.ndarray:
    """Return the model's float32 logits ``(C, H, W)`` for one uint8 image ``(bands, H, W)``."""
    model.eval()
    device = next(model.parameters()).device
    return run_model(model, [rgb], device=device, bf16=bf16)[0]


def _footprints(frames: list, crss: list[str], scored: bool, name: str) -> Footprints:
    # Each scene is compared in its own tile's UTM zone: the validation areas may lie in several.
    geoms, scores, images = [], [], []
    for index, (frame, crs) in enumerate(zip(frames, crss)):
        local = frame.to_crs(crs)
        geoms.extend(local.geometry.values)
        scores.extend(local["confidence"].to_numpy())
        images.extend([index] * len(local))
    n = len(geoms)
    return Footprints(
        geometry=np.array(geoms, dtype=object),
        score=np.asarray(scores, dtype=float) if scored else None,
        image_id=np.asarray(images, dtype=int),
        crs=CRS.from_user_input(crss[0]) if crss else None,
        source=name,
        names=np.array([f"{name} {i}" for i in range(n)], dtype=object),
    )


def score_scenes(
    model: BuildingModel,
    scenes: Sequence[Scene],
    *,
    bf16: bool = False,
    spec: GridSpec | None = None,
    logits: Sequence[np.ndarray] | None = None,
) -> Evaluation:
    """Predict labelled scenes as ``ob-infer`` would and score them with ``ob-eval``'s metrics.

    Args:
        model: the model to score (left in eval mode).
        scenes: labelled scenes (each is compared in its own tile's UTM zone).
        bf16: run the forward pass under bf16 autocast.
        spec: the grid the scenes were read on (the default grid when None).
        logits: the model's logits of each scene, when the caller computed them (``ob-search``
            runs its candidates' decoders on cached encoder features); ``model`` is not run.

    Returns:
        The evaluation: COCO mAP, SpaceNet F1, the precision/recall curve over confidence.

    Raises:
        ValueError: if no scene is labelled.
    """
    spec = spec or GridSpec()
    preds, truths, crss = [], [], []
    for index, scene in enumerate(scenes):
        if scene.instances is None:
            continue
        tile = Tile(scene.tile_id, spec)
        out = logits[index] if logits is not None else predict(model, scene.rgb, bf16=bf16)
        labels, confidence = heads.decode(out)
        preds.append(owned_footprints(tile, labels, confidence, scene.valid))
        truths.append(owned_footprints(tile, scene.instances, None, scene.valid))
        crss.append(scene.grid.crs)
    if not crss:
        raise ValueError("validation needs at least one labelled scene")
    return evaluate(
        _footprints(preds, crss, True, "prediction"),
        _footprints(truths, crss, False, "label"),
        cap_per_image=False,  # a tile is an area, not a COCO image of at most 100 objects
    )


def validate(
    model: BuildingModel,
    scenes: Sequence[Scene],
    *,
    bf16: bool = False,
    spec: GridSpec | None = None,
) -> dict:
    """Score the model on labelled scenes (see :func:`score_scenes`).

    Returns:
        ``{"ap", "ap50", "ap75", "f1", "precision", "recall", "best_f1", "n_pred", "n_truth"}``:
        F1, precision and recall of every prediction (no confidence floor), and the best F1 over
        confidence thresholds (None when nothing is found).
    """
    return metrics(score_scenes(model, scenes, bf16=bf16, spec=spec))


def metrics(result: Evaluation) -> dict:
    """Return :func:`validate`'s figures from a :func:`score_scenes` result."""
    best = best_f1(result.curve)
    return {
        "ap": result.coco.ap,
        "ap50": result.coco.ap50,
        "ap75": result.coco.ap75,
        "f1": result.f1.total.f1,
        "precision": result.f1.total.precision,
        "recall": result.f1.total.recall,
        "best_f1": None if best is None else best["f1"],
        "n_pred": result.n_pred,
        "n_truth": result.n_truth,
    }
