"""Ending a run early: a time budget, patience on the validation score, the best weights kept.

The hooks follow :class:`open_buildings.training.loop.Trainer`'s contract: they run after each
step and may set ``trainer.stop``, which ends the run once that step's hooks have all run (the
validation hook then validates one last time). The best weights are written to a file when they
improve, so a resumed run keeps the best of the steps taken before the interruption.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from open_buildings.models.checkpoint import save_checkpoint

#: The validation figure early stopping and ``keep_best`` follow: the best F1 over confidence
#: thresholds, which calibration then turns into the default output.
SCORE = "best_f1"
BEST_WEIGHTS = "best.safetensors"


@dataclass
class Best:
    """The best validation so far: its (1-based) step, score and saved weights."""

    step: int
    score: float
    path: Path


def deadline_hook(minutes: float) -> Any:
    """Stop the run once ``minutes`` of training have passed in this process."""
    began = time.monotonic()

    def hook(trainer: Any, step: int, record: dict[str, Any]) -> None:
        if trainer.stop is None and time.monotonic() - began >= minutes * 60:
            trainer.stop = f"time budget of {minutes:g} minutes reached"

    return hook


def best_hook(folder: Path, patience: int | None) -> Any:
    """Save the weights at each validation that beats the best :data:`SCORE` so far; stop after
    ``patience`` validations in a row that do not (None: never stop for that)."""

    def hook(trainer: Any, step: int, record: dict[str, Any]) -> None:
        val = record.get("val")
        if val is None:
            return
        score = val.get(SCORE) or 0.0
        if trainer.best is None or score > trainer.best.score:
            path = folder / BEST_WEIGHTS
            save_checkpoint(trainer.result, path)
            trainer.best = Best(step + 1, score, path)
            return
        since = sum(1 for h in trainer.history if "val" in h and h["step"] > trainer.best.step)
        if patience and since + 1 >= patience and trainer.stop is None:
            trainer.stop = (
                f"no better {SCORE} in {patience} validations (best {trainer.best.score:.3f} "
                f"at step {trainer.best.step})"
            )

    return hook


def best_from_history(history: list[dict[str, Any]], folder: Path) -> Best | None:
    """The best validation of a resumed run's earlier steps, if its weights were saved."""
    vals = [h for h in history if "val" in h]
    path = folder / BEST_WEIGHTS
    if not vals or not path.is_file():
        return None
    top = max(vals, key=lambda h: h["val"].get(SCORE) or 0.0)  # first of equals, as best_hook
    return Best(top["step"], top["val"].get(SCORE) or 0.0, path)
