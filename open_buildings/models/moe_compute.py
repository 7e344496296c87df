"""Measuring a V-MoE model's expert compute at a capacity: what ``--moe-capacity`` saves.

:func:`measure_expert_compute` runs one batch at a given eval capacity and counts the expert
FLOPs the routing actually dispatched; :func:`capacity_applied` is the one "run at capacity c,
then restore" context, shared with ``bench.models``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from open_buildings.models.moe import moe_layers, set_capacity

__all__ = ["ExpertCompute", "capacity_applied", "measure_expert_compute"]


@dataclass(frozen=True)
class ExpertCompute:
    """Expert work of one forward, summed over the MoE layers.

    Attributes:
        capacity_factor: The eval capacity factor it ran at.
        choices: Token-to-expert choices the routers made (``k`` per token per layer).
        served: Choices that found room in their expert's buffer.
        slots: Buffer rows the experts computed (``E * C`` per group per layer, filled or not).
        flops: Expert FLOPs executed: each layer's slots times ``4 * width * hidden`` (two
            matmuls, a multiply-add counted as 2 FLOPs).
        flops_all_choices: Expert FLOPs if every choice were served exactly (capacity 1.0 with
            a perfectly balanced load).
    """

    capacity_factor: float
    choices: int
    served: int
    slots: int
    flops: int
    flops_all_choices: int

    @property
    def flops_fraction(self) -> float:
        """Expert FLOPs executed, as a fraction of serving every choice."""
        return self.flops / self.flops_all_choices

    @property
    def served_fraction(self) -> float:
        """Fraction of the routers' choices that were served."""
        return self.served / self.choices


@contextlib.contextmanager
def capacity_applied(model: nn.Module, capacity_factor: float) -> Iterator[None]:
    """Put ``model`` in eval mode at an eval capacity factor; restore both on exit.

    Args:
        model: A model with MoE layers.
        capacity_factor: Eval capacity factor to use inside the block.

    Raises:
        ConfigError: The model has no MoE layers.
    """
    layers = moe_layers(model)
    previous = [layer.capacity_factor_eval for layer in layers]
    was_training = model.training
    config = getattr(model, "config", None)
    saved_config = dict(config) if isinstance(config, dict) else None
    set_capacity(model, capacity_factor)
    model.eval()
    try:
        yield
    finally:
        for layer, value in zip(layers, previous, strict=True):
            layer.capacity_factor_eval = value
        if saved_config is not None:
            config.clear()
            config.update(saved_config)
        model.train(was_training)


@torch.no_grad()
def measure_expert_compute(
    model: nn.Module, images: torch.Tensor, capacity_factor: float
) -> ExpertCompute:
    """Run ``model`` once in eval mode at a capacity factor and count the expert work done.

    The model's mode and eval capacities are restored afterwards.

    Args:
        model: A model with MoE layers.
        images: A batch the model accepts.
        capacity_factor: Eval capacity factor to measure at.

    Returns:
        The counts; ``flops_fraction`` is the share of expert FLOPs executed relative to
        serving every routing choice (so ``1 - flops_fraction`` is the compute saved).
    """
    layers = moe_layers(model)
    with capacity_applied(model, capacity_factor):
        model(images)
    choices = served = slots = flops = full = 0
    for layer in layers:
        routing = layer.last_routing
        if routing is None:
            raise RuntimeError("an MoE layer did not run in the forward pass")
        groups, tokens, k = routing.slot.shape
        per_row = 4 * layer.width * layer.hidden
        layer_slots = groups * layer.num_experts * routing.capacity
        choices += groups * tokens * k
        served += int((routing.slot >= 0).sum())
        slots += layer_slots
        flops += layer_slots * per_row
        full += groups * tokens * k * per_row
    return ExpertCompute(float(capacity_factor), choices, served, slots, flops, full)
