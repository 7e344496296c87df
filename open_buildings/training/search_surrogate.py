"""``ob-search``'s surrogate: an ensemble of small MLPs that predicts a cell's proxy score.

As in PNAS, the surrogate is fitted on every cell trained so far and ranks the children of the
next level before any of them is trained; its Spearman rank correlation on the children that are
then trained is the evidence that it works. scikit-learn's ``MLPRegressor`` is the MLP; the
ensemble (different seeds, averaged) steadies it on the few dozen points a CPU search has.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import spearmanr

from open_buildings.training.search_space import Cell, features


class Surrogate:
    """Predict proxy scores of cells from :func:`~.search_space.features`.

    Args:
        max_blocks: the search's largest cell (the feature width).
        members: MLPs in the ensemble.
        seed: the first member's seed.
    """

    def __init__(self, max_blocks: int, members: int = 5, seed: int = 0) -> None:
        self.max_blocks = max_blocks
        self.members = members
        self.seed = seed
        self._models: list = []
        self._mean = 0.0
        self._scale = 1.0

    def fit(self, cells: Sequence[Cell], scores: Sequence[float]) -> Surrogate:
        """Fit every member on the measured scores (standardised)."""
        from sklearn.neural_network import MLPRegressor

        x = np.stack([features(c, self.max_blocks) for c in cells])
        y = np.asarray(scores, dtype=np.float64)
        self._mean, self._scale = float(y.mean()), float(y.std()) or 1.0
        self._models = [
            MLPRegressor(
                hidden_layer_sizes=(32,),
                alpha=1e-2,
                learning_rate_init=1e-2,
                max_iter=2000,
                random_state=self.seed + m,
            ).fit(x, (y - self._mean) / self._scale)
            for m in range(self.members)
        ]
        return self

    def predict(self, cells: Sequence[Cell]) -> np.ndarray:
        """The ensemble's mean predicted score of each cell."""
        if not self._models:
            raise ValueError("fit the surrogate before predicting")
        x = np.stack([features(c, self.max_blocks) for c in cells])
        mean = np.mean([m.predict(x) for m in self._models], axis=0)
        return mean * self._scale + self._mean


def rank_correlation(predicted: Sequence[float], measured: Sequence[float]) -> float | None:
    """Spearman's rank correlation (None for fewer than three pairs or constant scores)."""
    if len(predicted) < 3 or len(set(measured)) < 2 or len(set(predicted)) < 2:
        return None
    return float(spearmanr(predicted, measured).statistic)
