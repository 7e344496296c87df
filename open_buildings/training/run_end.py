"""The end of a training run on rank 0: the kept weights (the best validated ones when asked),
calibrated on the validation tiles, saved with the training imagery's input ranges; the history
and its curve beside them."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from open_buildings.errors import EvaluationError
from open_buildings.geo.grid import GridSpec
from open_buildings.models.checkpoint import load_checkpoint, save_checkpoint
from open_buildings.training.calibrate import input_ranges, operating_points
from open_buildings.training.config import TrainConfig
from open_buildings.training.curves import plot_history
from open_buildings.training.sources import RunData

if TYPE_CHECKING:
    from open_buildings.training.loop import Trainer


def finish_run(
    cfg: TrainConfig,
    trainer: Trainer,
    data: RunData,
    weights_path: Path,
    device: torch.device,
    seconds: float,
    change: bool,
) -> dict[str, Any]:
    """Rank 0's end of a run: the kept weights calibrated and saved, the history, the curve."""
    history = trainer.history
    model, scored, final = trainer.result, trainer.scored, last_validation(history)
    best = trainer.best if cfg.stopping.keep_best else None
    if best is not None and best.step != history[-1]["step"]:
        model, scored = load_checkpoint(best.path, device=device), None
        final = next(h["val"] for h in history if h["step"] == best.step)
    points = None
    if data.val and not change:  # ob-infer's default thresholds, measured on held-out data
        names = ", ".join(a.name for a in cfg.val)
        try:
            points = operating_points(
                model,
                data.val,
                measured_on=names,
                spec=GridSpec(level=cfg.grid_level),
                scored=scored,
            )
        except EvaluationError as exc:  # the weights are still worth saving
            warnings.warn(f"no operating points stored: {exc}", stacklevel=2)
    trained_on = ", ".join(a.name for a in cfg.train) or f"the chips of {cfg.shards}"
    ranges = (
        None if change else input_ranges(model, data.range_images, measured_on=trained_on)
    )  # what the training imagery looked like: ob-infer warns about tiles unlike it
    save_checkpoint(model, weights_path, operating_points=points, input_ranges=ranges)
    out = weights_path.parent
    (out / "history.json").write_text(json.dumps(history, indent=1))
    plot_history(history, out / "training_curve.png")
    return {
        "weights": str(weights_path),
        "history": history,
        "seconds": seconds,
        "final": final,
        "operating_points": points,
        "bf16": cfg.bf16,
        "stopped": trainer.stop,
        "best_step": None if best is None else best.step,
    }


def last_validation(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The latest validation's metrics in a history (None if it has none)."""
    return next((h["val"] for h in reversed(history) if "val" in h), None)
