"""The training curve ``ob-train`` draws next to its weights (``training_curve.png``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def plot_history(history: list[dict[str, Any]], path: Path) -> None:
    """Draw the loss (and validation AP50/F1, or a change model's change F1, where measured)
    against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = [h for h in history if h["loss"] is not None]  # step 0: a validation only
    steps = [h["step"] for h in trained]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [h["loss"] for h in trained], lw=0.8, label="training loss")
    if any("kl" in h for h in history):
        ax.plot(steps, [h.get("kl", np.nan) for h in trained], lw=0.8, label="soft KL")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    vals = [h for h in history if "val" in h]
    if vals:
        ax2 = ax.twinx()
        vs = [h["step"] for h in vals]
        if "object_f1" in vals[0]["val"]:  # a change model: change F1 of pixels and buildings
            second, names = "object_f1", ("val change F1 (buildings)", "val change F1 (pixels)")
        else:
            second, names = "ap50", ("val AP50", "val F1")
        ax2.plot(vs, [h["val"][second] or 0 for h in vals], "o-", color="C2", label=names[0])
        ax2.plot(vs, [h["val"]["f1"] for h in vals], "s-", color="C3", label=names[1])
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("validation")
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
