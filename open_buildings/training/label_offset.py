"""How far building labels are shifted from the buildings a model sees in the imagery.

OSM outlines are often traced on other imagery than the user's and sit a metre or more off. The
shift is the lag that best lines the label mask up with the model's building probability: their
cross-correlation (scipy's FFT correlation), summed over the scenes, peaks there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.signal import correlate

from open_buildings.models.base import BuildingModel
from open_buildings.pipelines.runtime import run_model
from open_buildings.training.scenes import Scene

#: Shifts this large (metres) or larger are worth a warning: more than the outline noise of OSM.
WARN_M = 1.5


@dataclass(frozen=True)
class Offset:
    """Labels lie ``east_m`` east and ``north_m`` north of the buildings the model sees."""

    east_m: float
    north_m: float

    @property
    def metres(self) -> float:
        """The length of the shift."""
        return float(np.hypot(self.east_m, self.north_m))

    def describe(self) -> str:
        """The shift in words, e.g. ``"2.5 m (2.0 m east, 1.5 m south)"``."""
        ew = f"{abs(self.east_m):.1f} m {'east' if self.east_m >= 0 else 'west'}"
        ns = f"{abs(self.north_m):.1f} m {'north' if self.north_m >= 0 else 'south'}"
        return f"{self.metres:.1f} m ({ew}, {ns})"


def label_offset(
    model: BuildingModel, scenes: Sequence[Scene], *, max_shift_m: float = 8.0
) -> Offset | None:
    """Estimate the shift of the labels against the model's buildings over labelled scenes.

    Args:
        model: a model that finds buildings in this imagery (the fine-tuning base).
        scenes: labelled scenes on one pixel size.
        max_shift_m: the largest shift looked for, each way.

    Returns:
        The shift, or None when no scene has both labels and predicted buildings.
    """
    total = None
    pixel = None
    for scene in scenes:
        if scene.instances is None or not (scene.instances > 0).any():
            continue
        pixel = scene.grid.pixel_size
        reach = int(round(max_shift_m / pixel))
        logits = run_model(model, [scene.rgb])[0]
        probs = 1.0 / (1.0 + np.exp(-logits[0].astype(np.float64)))
        labels = (scene.instances > 0).astype(np.float64)
        valid = scene.valid
        a = np.where(valid, labels - labels[valid].mean(), 0.0)
        b = np.where(valid, probs - probs[valid].mean(), 0.0)
        corr = correlate(a, b, mode="full", method="fft")
        r0, c0 = a.shape[0] - 1, a.shape[1] - 1  # zero lag in the full correlation
        window = corr[r0 - reach : r0 + reach + 1, c0 - reach : c0 + reach + 1]
        total = window if total is None else total + window
    if total is None or pixel is None:
        return None
    reach = (total.shape[0] - 1) // 2
    row, col = np.unravel_index(int(np.argmax(total)), total.shape)
    # A positive lag means the labels lie further down (south) or right (east) than the buildings.
    return Offset(east_m=(col - reach) * pixel, north_m=-(row - reach) * pixel)
