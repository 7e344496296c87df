"""Losses against values computed by hand with math.log on 2x2 cases."""

from __future__ import annotations

import math

import pytest
import torch

from open_buildings.models.losses import (
    focal_loss,
    segmentation_loss,
    soft_dice_loss,
    weighted_bce,
)


def _sig(z: float) -> float:
    return 1 / (1 + math.exp(-z))


LOGITS = [[0.0, 2.0], [-1.0, 3.0]]
TARGET = [[1.0, 0.0], [0.0, 1.0]]
WEIGHT = [[1.0, 2.0], [3.0, 4.0]]


def _t(v: list[list[float]]) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float32)[None, None]


def _bce_terms() -> list[float]:
    # -[t log p + (1 - t) log(1 - p)] per pixel
    return [
        -math.log(_sig(0.0)),
        -math.log(1 - _sig(2.0)),
        -math.log(1 - _sig(-1.0)),
        -math.log(_sig(3.0)),
    ]


def test_weighted_bce_by_hand() -> None:
    terms = _bce_terms()
    w = [1.0, 2.0, 3.0, 4.0]
    expected = sum(a * b for a, b in zip(w, terms)) / sum(w)
    got = weighted_bce(_t(LOGITS), _t(TARGET), torch.tensor(WEIGHT)[None])
    assert float(got) == pytest.approx(expected, rel=1e-6)
    unweighted = weighted_bce(_t(LOGITS), _t(TARGET))
    assert float(unweighted) == pytest.approx(sum(terms) / 4, rel=1e-6)


def test_focal_by_hand_and_gamma_zero_is_bce() -> None:
    p = [_sig(0.0), _sig(2.0), _sig(-1.0), _sig(3.0)]
    t = [1.0, 0.0, 0.0, 1.0]
    p_t = [pi * ti + (1 - pi) * (1 - ti) for pi, ti in zip(p, t)]
    terms = [(1 - q) ** 2 * b for q, b in zip(p_t, _bce_terms())]
    got = focal_loss(_t(LOGITS), _t(TARGET), gamma=2.0)
    assert float(got) == pytest.approx(sum(terms) / 4, rel=1e-6)
    assert float(focal_loss(_t(LOGITS), _t(TARGET), gamma=0.0)) == pytest.approx(
        float(weighted_bce(_t(LOGITS), _t(TARGET))), rel=1e-7
    )


def test_soft_dice_by_hand() -> None:
    p = [_sig(0.0), _sig(2.0), _sig(-1.0), _sig(3.0)]
    t = [1.0, 0.0, 0.0, 1.0]
    inter = sum(a * b for a, b in zip(p, t))
    expected = 1 - (2 * inter + 1) / (sum(p) + sum(t) + 1)
    assert float(soft_dice_loss(_t(LOGITS), _t(TARGET))) == pytest.approx(expected, rel=1e-6)
    # empty target, confident empty prediction: nearly zero thanks to smoothing
    empty = soft_dice_loss(torch.full((1, 1, 2, 2), -20.0), torch.zeros(1, 1, 2, 2))
    assert float(empty) < 1e-7


def test_segmentation_loss_sums_its_parts_and_has_gradients() -> None:
    logits = _t(LOGITS).repeat(1, 2, 1, 1).requires_grad_()
    target = _t(TARGET).repeat(1, 2, 1, 1)
    weight = torch.tensor(WEIGHT)[None]
    total = segmentation_loss(logits, target, weight, dice_weight=0.5)
    expected = weighted_bce(logits, target, weight) + 0.5 * soft_dice_loss(logits, target)
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    total.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_soft_targets_are_allowed_and_minimised_at_the_target() -> None:
    target = torch.full((1, 1, 2, 2), 0.3)
    at = weighted_bce(torch.logit(target), target)
    off = weighted_bce(torch.logit(target) + 0.5, target)
    assert float(at) < float(off)


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="differs from logits"):
        weighted_bce(torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="weight must be"):
        weighted_bce(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4), torch.ones(4, 4))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        soft_dice_loss(torch.zeros(2, 4, 4), torch.zeros(2, 4, 4))
