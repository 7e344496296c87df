"""Losses that match the targets of :mod:`open_buildings.models.heads`.

Every channel is an independent sigmoid. The pixel term is a weighted binary cross-entropy (or
its focal variant) normalised by the total weight, so its scale does not depend on how heavy
the edge weights are; the region term is a soft Dice per image and channel. Targets may be soft
(mixup, self-training pseudo-labels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

__all__ = ["focal_loss", "segmentation_loss", "soft_dice_loss", "weighted_bce"]


def _check(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> None:
    if logits.ndim != 4:
        raise ValueError(f"logits must be (B, C, H, W), got shape {tuple(logits.shape)}")
    if target.shape != logits.shape:
        raise ValueError(
            f"target shape {tuple(target.shape)} differs from logits {tuple(logits.shape)}"
        )
    if weight is not None:
        b, _, h, w = logits.shape
        if weight.shape not in ((b, h, w), (b, 1, h, w), logits.shape):
            raise ValueError(
                f"weight must be (B, H, W), (B, 1, H, W) or like logits; got "
                f"{tuple(weight.shape)} for logits {tuple(logits.shape)}"
            )


def _broadcast_weight(weight: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if weight is None:
        return torch.ones_like(like)
    if weight.ndim == 3:
        weight = weight[:, None]
    return weight.to(like.dtype).expand_as(like)


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    gamma: float = 2.0,
    total_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted sigmoid focal loss, ``sum(w * (1 - p_t)^gamma * bce) / sum(w)``.

    ``p_t = p * t + (1 - p) * (1 - t)``, so soft targets are allowed; ``gamma = 0`` gives
    :func:`weighted_bce`.

    Args:
        logits: ``(B, C, H, W)``.
        target: Same shape, in [0, 1].
        weight: Per-pixel weight ``(B, H, W)`` (shared by channels) or ``(B, C, H, W)``.
        gamma: Focusing exponent (>= 0).
        total_weight: the normaliser in place of ``sum(w)`` (data-parallel ranks: the mean of
            their sums, so that the ranks' mean loss is the loss of their joint batch).

    Returns:
        A scalar tensor.
    """
    _check(logits, target, weight)
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    logits = logits.float()
    target = target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if gamma:
        p = torch.sigmoid(logits)
        p_t = p * target + (1 - p) * (1 - target)
        bce = (1 - p_t).pow(gamma) * bce
    w = _broadcast_weight(weight, bce)
    norm = w.sum() if total_weight is None else total_weight.to(w.dtype)
    return (w * bce).sum() / norm.clamp_min(torch.finfo(w.dtype).tiny)


def weighted_bce(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Weighted binary cross-entropy with logits, ``sum(w * bce) / sum(w)``.

    Args:
        logits: ``(B, C, H, W)``.
        target: Same shape, in [0, 1].
        weight: Per-pixel weight ``(B, H, W)`` (shared by channels) or ``(B, C, H, W)``.

    Returns:
        A scalar tensor.
    """
    return focal_loss(logits, target, weight, gamma=0.0)


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, *, smooth: float = 1.0
) -> torch.Tensor:
    """Soft Dice loss, ``1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s)``, per image and channel.

    Args:
        logits: ``(B, C, H, W)``.
        target: Same shape, in [0, 1].
        smooth: Additive smoothing ``s``; keeps the loss defined (0) on empty chips.

    Returns:
        The mean over images and channels, a scalar tensor.
    """
    _check(logits, target, None)
    if smooth < 0:
        raise ValueError(f"smooth must be >= 0, got {smooth}")
    p = torch.sigmoid(logits.float())
    t = target.float()
    inter = (p * t).sum(dim=(2, 3))
    total = p.sum(dim=(2, 3)) + t.sum(dim=(2, 3))
    return (1 - (2 * inter + smooth) / (total + smooth)).mean()


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    dice_weight: float = 1.0,
    focal_gamma: float = 0.0,
    smooth: float = 1.0,
    total_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """The training loss: weighted BCE (focal when ``focal_gamma > 0``) plus weighted Dice.

    Args:
        logits: ``(B, C, H, W)`` model outputs.
        target: Same shape, from :func:`open_buildings.models.heads.make_targets`.
        weight: ``(B, H, W)`` per-pixel weights from ``make_targets`` (``None``: all ones).
        dice_weight: Multiplier of the Dice term (0 disables it).
        focal_gamma: 0 for BCE, > 0 for focal loss.
        smooth: Dice smoothing.
        total_weight: the pixel term's normaliser (see :func:`focal_loss`).

    Returns:
        A scalar tensor.
    """
    if dice_weight < 0:
        raise ValueError(f"dice_weight must be >= 0, got {dice_weight}")
    loss = focal_loss(logits, target, weight, gamma=focal_gamma, total_weight=total_weight)
    if dice_weight:
        loss = loss + dice_weight * soft_dice_loss(logits, target, smooth=smooth)
    return loss
