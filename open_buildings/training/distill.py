"""Self-training: the student matches a teacher's soft per-pixel probabilities (soft KL loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812


def soft_targets(teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Return the teacher's softened probabilities ``sigmoid(logits / T)`` per channel."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.sigmoid(teacher_logits / temperature)


def soft_kl_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    temperature: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(teacher ‖ student) between per-pixel Bernoulli distributions, scaled by T².

    Every output channel is an independent sigmoid, so each pixel and channel is a two-class
    distribution ``(p, 1-p)``: ``KL = p·log(p/q) + (1-p)·log((1-p)/(1-q))`` with
    ``q = sigmoid(student / T)``. The T² factor keeps gradient sizes comparable across
    temperatures (Hinton et al. 2015).

    Args:
        student_logits: ``(B, C, H, W)``.
        teacher_probs: ``(B, C, H, W)`` from :func:`soft_targets` (already at temperature T).
        temperature: T > 0.
        mask: optional ``(B, H, W)`` weights (e.g. 0 where there is no imagery).

    Returns:
        The mean KL over masked pixels and channels, times T².
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = student_logits / temperature
    p = teacher_probs.clamp(1e-6, 1 - 1e-6)
    log_q, log_1mq = F.logsigmoid(z), F.logsigmoid(-z)
    kl = p * (torch.log(p) - log_q) + (1 - p) * (torch.log1p(-p) - log_1mq)
    if mask is None:
        return kl.mean() * temperature**2
    m = mask.unsqueeze(1).expand_as(kl)
    return (kl * m).sum() / m.sum().clamp_min(1.0) * temperature**2
