"""Mixup and the soft KL loss against values computed by hand."""

import math

import numpy as np
import pytest
import torch

from open_buildings.training.distill import soft_kl_loss, soft_targets
from open_buildings.training.mixup import mixup


def test_mixup_mixes_images_targets_and_weights_with_one_lambda() -> None:
    images = torch.tensor([0.0, 1.0, 2.0]).view(3, 1, 1, 1).expand(3, 2, 2, 2).clone()
    targets = torch.tensor([0.0, 1.0, 0.5]).view(3, 1, 1, 1).expand(3, 2, 2, 2).clone()
    weights = torch.tensor([1.0, 3.0, 5.0]).view(3, 1, 1).expand(3, 2, 2).clone()
    mixed_x, mixed_y, mixed_w, lam = mixup(images, targets, weights, np.random.default_rng(7), 0.4)
    # The same draws, by hand: λ first, then the partner permutation.
    rng = np.random.default_rng(7)
    expected_lam = rng.beta(0.4, 0.4)
    perm = rng.permutation(3)
    assert lam == pytest.approx(expected_lam)
    for i in range(3):
        j = perm[i]
        assert mixed_x[i, 0, 0, 0].item() == pytest.approx(lam * i + (1 - lam) * j)
        assert mixed_y[i, 0, 0, 0].item() == pytest.approx(
            lam * [0.0, 1.0, 0.5][i] + (1 - lam) * [0.0, 1.0, 0.5][j]
        )
        assert mixed_w[i, 0, 0].item() == pytest.approx(
            lam * [1.0, 3.0, 5.0][i] + (1 - lam) * [1.0, 3.0, 5.0][j]
        )


def test_mixup_rejects_bad_alpha() -> None:
    x = torch.zeros(2, 1, 1, 1)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        mixup(x, x, x[:, 0], np.random.default_rng(0), 0.0)


def test_soft_kl_by_hand() -> None:
    # One pixel, one channel: teacher p = 0.8, student logit 0 (q = 0.5), T = 1.
    p = torch.full((1, 1, 1, 1), 0.8)
    s = torch.zeros(1, 1, 1, 1)
    expected = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)
    assert soft_kl_loss(s, p, 1.0).item() == pytest.approx(expected, rel=1e-5)


def test_soft_kl_temperature_and_mask() -> None:
    # T = 2: q = sigmoid(2 / 2) and the loss is scaled by T² = 4.
    s = torch.tensor([2.0, -4.0]).view(1, 1, 1, 2)
    p = torch.tensor([0.3, 0.9]).view(1, 1, 1, 2)
    q0 = 1 / (1 + math.exp(-1.0))
    kl0 = 0.3 * math.log(0.3 / q0) + 0.7 * math.log(0.7 / (1 - q0))
    mask = torch.tensor([1.0, 0.0]).view(1, 1, 2)
    assert soft_kl_loss(s, p, 2.0, mask).item() == pytest.approx(4 * kl0, rel=1e-5)
    assert soft_kl_loss(s, p.clone(), 2.0).item() > 0


def test_kl_is_zero_when_student_matches_teacher() -> None:
    logits = torch.randn(2, 2, 4, 4)
    probs = soft_targets(logits, 3.0)
    assert soft_kl_loss(logits, probs, 3.0).item() == pytest.approx(0.0, abs=1e-5)
