"""Mixup (Zhang et al. 2018), as the Open Buildings paper uses it for segmentation."""

from __future__ import annotations

import numpy as np
import torch


def mixup(
    images: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    rng: np.random.Generator,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mix each sample with another of the batch, with one λ ~ Beta(α, α) for the whole batch.

    The images, the (soft) targets and the per-pixel loss weights are all mixed with the same λ:
    ``x = λ·x_i + (1-λ)·x_j``. The partner ``j`` is a random permutation of the batch.

    Args:
        images: ``(B, bands, H, W)``.
        targets: ``(B, C, H, W)`` in [0, 1].
        weights: ``(B, H, W)`` per-pixel loss weights.
        rng: the step's generator, so a resumed run mixes identically.
        alpha: the Beta distribution's parameter (> 0).

    Returns:
        The mixed images, targets and weights, and λ.
    """
    if alpha <= 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha}")
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(images.shape[0]))
    mixed = [lam * t + (1.0 - lam) * t[perm] for t in (images, targets, weights)]
    return mixed[0], mixed[1], mixed[2], lam
