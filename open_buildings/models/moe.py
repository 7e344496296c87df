"""Sparse mixture-of-experts MLP with V-MoE routing (Riquelme et al. 2021).

Written by hand: no maintained PyTorch library implements V-MoE's noisy top-k routing with Batch
Prioritized Routing and its importance/load losses (the reference code, google-research/vmoe, is
JAX). This module follows that code's conventions:

- **Gates.** ``softmax(W x + eps)`` with ``eps ~ N(0, noise_std**2)`` (``noise_std = 1/E`` by
  default) in training only; the router runs in float32 (also under autocast) and has no bias.
- **Top-k.** Each token picks its ``k`` experts with the largest gates; the gate values, not
  renormalised, weight the experts' outputs.
- **Groups and capacity.** Tokens are routed within groups (``group_size`` images); each expert
  takes at most ``C = round(k * capacity_factor * T / E)`` tokens of a group of ``T`` tokens
  (clamped to ``[1, T]``). Training and inference have their own capacity factor.
- **Batch Prioritized Routing.** Within a group the tokens are sorted by their top gate
  (descending) and the buffers are filled in that order, every token's first choice before any
  second choice. With a capacity below 1 the least confident tokens are dropped first. A token
  whose every choice was dropped gets a zero MoE output, so it passes through the block's
  residual unchanged.
- **Auxiliary losses** (the paper's Appendix A.2), per group, averaged over groups: the
  importance loss (squared coefficient of variation of each expert's summed clean gates) and the
  load loss (the same of each expert's smooth probability of being selected, from the noise's
  normal CDF). Their weighted sum is ``last_aux_loss`` after a training forward, which
  :meth:`~open_buildings.models.base.BuildingModel.aux_loss` collects.

The experts are batched weights ``(E, width, hidden)``, so all experts run in one ``bmm`` over an
``(E, groups * C, width)`` buffer. Tokens reach the buffer by index gather and come back by index
gather (``dispatch="index"``) or by dense one-hot einsums (``dispatch="einsum"``); both compute the
same thing.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from open_buildings.errors import ConfigError

__all__ = [
    "DISPATCH_MODES",
    "MoEMlp",
    "Routing",
    "expert_capacity",
    "importance_loss",
    "load_loss",
    "moe_layers",
    "route",
    "set_capacity",
]

DISPATCH_MODES = ("index", "einsum")


class Routing(NamedTuple):
    """Where each token of each group went.

    Attributes:
        expert: ``(G, T, k)`` the chosen experts, best first.
        gate: ``(G, T, k)`` their gate values (the combine weights).
        slot: ``(G, T, k)`` the position in the expert's buffer, ``-1`` where the choice was
            dropped because the expert was full.
        capacity: Buffer size of every expert in every group.
    """

    expert: torch.Tensor
    gate: torch.Tensor
    slot: torch.Tensor
    capacity: int


def expert_capacity(tokens: int, num_experts: int, k: int, capacity_factor: float) -> int:
    """Return the buffer size of each expert for a group of ``tokens`` tokens.

    Args:
        tokens: Tokens per routing group (``T``).
        num_experts: Experts (``E``).
        k: Experts chosen per token.
        capacity_factor: 1.0 gives room for every choice if the load were perfectly balanced.

    Returns:
        ``round(k * capacity_factor * tokens / num_experts)``, at least 1 and at most ``tokens``
        (an expert never gets more than one choice from each token).
    """
    return min(tokens, max(1, round(k * capacity_factor * tokens / num_experts)))


def route(gates: torch.Tensor, k: int, capacity: int, *, batch_priority: bool = True) -> Routing:
    """Assign each token's top-``k`` experts to buffer slots, within each group.

    Args:
        gates: ``(G, T, E)`` softmax gates of every token of every group.
        k: Experts per token.
        capacity: Buffer size of each expert per group.
        batch_priority: Fill the buffers in the order of the tokens' top gate (Batch Prioritized
            Routing); otherwise in token order (V-MoE's "vanilla" routing).

    Returns:
        The routing; the slots of a group's tokens for each expert are ``0 .. n-1`` with
        ``n <= capacity``.
    """
    groups, tokens, num_experts = gates.shape
    top_gate, top_expert = gates.topk(k, dim=-1)
    if batch_priority:
        order = torch.argsort(top_gate[..., 0], dim=1, descending=True, stable=True)
    else:
        order = torch.arange(tokens, device=gates.device).expand(groups, tokens)
    by_token = order.unsqueeze(-1).expand(groups, tokens, k)
    # Choice-major order: all first choices (in priority order), then all second choices...
    queue = top_expert.gather(1, by_token).transpose(1, 2).reshape(groups, k * tokens)
    one_hot = F.one_hot(queue, num_experts)
    position = (one_hot.cumsum(dim=1) * one_hot).sum(dim=-1) - 1
    position = torch.where(position < capacity, position, -1)
    sorted_slot = position.reshape(groups, k, tokens).transpose(1, 2)
    slot = torch.empty_like(sorted_slot).scatter_(1, by_token, sorted_slot)
    return Routing(top_expert, top_gate, slot, capacity)


def _cv_squared(values: torch.Tensor) -> torch.Tensor:
    # Squared coefficient of variation over the last axis (population variance), as in vmoe.
    return values.var(dim=-1, unbiased=False) / values.mean(dim=-1).square()


def importance_loss(logits: torch.Tensor) -> torch.Tensor:
    """The importance loss: CV² of each expert's summed gates, averaged over groups.

    Args:
        logits: ``(G, T, E)`` router logits without noise.

    Returns:
        A scalar.
    """
    importance = logits.softmax(dim=-1).sum(dim=1)
    return _cv_squared(importance).mean()


def load_loss(
    logits: torch.Tensor, noisy_logits: torch.Tensor, noise_std: float, k: int
) -> torch.Tensor:
    """The load loss: CV² of each expert's smooth selection probability, averaged over groups.

    For token ``t`` and expert ``e``, ``p = 1 - Phi((threshold_t - logits_te) / noise_std)`` is
    the probability that ``e`` would beat the token's ``k``-th largest noisy logit if its noise
    were drawn again (Riquelme et al. 2021, Appendix A.2).

    Args:
        logits: ``(G, T, E)`` router logits without noise.
        noisy_logits: The same plus the noise that routed this forward.
        noise_std: The noise's standard deviation (> 0).
        k: Experts per token.

    Returns:
        A scalar.
    """
    threshold = noisy_logits.topk(k, dim=-1).values[..., -1:]
    p = torch.special.ndtr((logits - threshold) / noise_std)
    return _cv_squared(p.mean(dim=1)).mean()


class MoEMlp(nn.Module):
    """A mixture of ``num_experts`` MLPs (``width -> hidden -> width``) with V-MoE routing.

    Maps ``(B, N, width)`` to ``(B, N, width)``, so it drops into a transformer block's MLP slot.
    After a training forward ``last_aux_loss`` holds the weighted auxiliary losses (``None`` after
    an eval forward), and after every forward ``last_routing`` holds the (detached) routing.

    Args:
        width: Token width.
        hidden: Hidden width of each expert.
        num_experts: Experts (``E``).
        k: Experts per token (``1 <= k <= E``).
        capacity_factor_train: Capacity factor in training mode.
        capacity_factor_eval: Capacity factor in eval mode (see :func:`set_capacity`).
        noise_std: Standard deviation of the gate noise in training; ``None`` means ``1/E``.
        group_size: Images per routing group; the batch must be a multiple of it. With 1, an
            image's output never depends on the other images of its batch.
        importance_weight: Weight of the importance loss.
        load_weight: Weight of the load loss (skipped when there is no noise).
        batch_priority: Batch Prioritized Routing (else tokens are served in their order).
        activation: The experts' activation (default tanh-GELU).
        dispatch: ``"index"`` (gather/scatter by index) or ``"einsum"`` (dense one-hot einsums).
    """

    def __init__(
        self,
        width: int,
        hidden: int,
        num_experts: int,
        k: int = 2,
        *,
        capacity_factor_train: float = 1.05,
        capacity_factor_eval: float = 1.05,
        noise_std: float | None = None,
        group_size: int = 1,
        importance_weight: float = 0.005,
        load_weight: float = 0.005,
        batch_priority: bool = True,
        activation: nn.Module | None = None,
        dispatch: str = "index",
    ) -> None:
        super().__init__()
        if num_experts < 1 or not 1 <= k <= num_experts:
            raise ConfigError(
                f"a mixture of experts needs num_experts >= 1 and 1 <= k <= num_experts, got "
                f"num_experts={num_experts}, k={k}"
            )
        for name, value in (("train", capacity_factor_train), ("eval", capacity_factor_eval)):
            _check_capacity(value, f"capacity_factor_{name}")
        if group_size < 1:
            raise ConfigError(f"group_size is in images and must be >= 1, got {group_size}")
        if noise_std is not None and noise_std < 0:
            raise ConfigError(f"noise_std must be >= 0 (or None for 1/E), got {noise_std}")
        if importance_weight < 0 or load_weight < 0:
            raise ConfigError(
                f"the auxiliary loss weights must be >= 0, got importance_weight="
                f"{importance_weight}, load_weight={load_weight}"
            )
        if dispatch not in DISPATCH_MODES:
            raise ConfigError(f"dispatch must be one of {DISPATCH_MODES}, got {dispatch!r}")
        self.width = width
        self.hidden = hidden
        self.num_experts = num_experts
        self.k = k
        self.capacity_factor_train = float(capacity_factor_train)
        self.capacity_factor_eval = float(capacity_factor_eval)
        self.noise_std = 1.0 / num_experts if noise_std is None else float(noise_std)
        self.group_size = group_size
        self.importance_weight = importance_weight
        self.load_weight = load_weight
        self.batch_priority = batch_priority
        self.dispatch = dispatch
        self.router = nn.Parameter(torch.empty(num_experts, width))
        self.w1 = nn.Parameter(torch.empty(num_experts, width, hidden))
        self.b1 = nn.Parameter(torch.zeros(num_experts, 1, hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, width))
        self.b2 = nn.Parameter(torch.zeros(num_experts, 1, width))
        self.act = nn.GELU(approximate="tanh") if activation is None else activation
        for weight in (self.router, self.w1, self.w2):
            nn.init.trunc_normal_(weight, std=0.02)
        self.last_aux_loss: torch.Tensor | None = None
        self.last_routing: Routing | None = None

    @property
    def capacity_factor(self) -> float:
        """The capacity factor of the current mode (training or eval)."""
        return self.capacity_factor_train if self.training else self.capacity_factor_eval

    def router_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Return float32 router logits ``(..., E)`` for tokens ``(..., width)``."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            return x.float() @ self.router.float().t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Route the tokens of ``x`` (``(B, N, width)``) to their experts and combine."""
        batch, tokens_per_image, width = x.shape
        if batch % self.group_size:
            raise ValueError(
                f"a batch of {batch} images does not split into routing groups of "
                f"{self.group_size}; use a batch size that is a multiple of group_size, or "
                "group_size=1"
            )
        groups = batch // self.group_size
        tokens = self.group_size * tokens_per_image
        x_groups = x.reshape(groups, tokens, width)
        logits = self.router_logits(x_groups)
        noisy = self.training and self.noise_std > 0
        routed = logits + self.noise_std * torch.randn_like(logits) if noisy else logits
        gates = routed.softmax(dim=-1)
        capacity = expert_capacity(tokens, self.num_experts, self.k, self.capacity_factor)
        routing = route(gates, self.k, capacity, batch_priority=self.batch_priority)
        if self.dispatch == "index":
            out = self._index_moe(x_groups, routing)
        else:
            out = self._einsum_moe(x_groups, routing)
        self.last_routing = Routing(
            routing.expert.detach(), routing.gate.detach(), routing.slot.detach(), capacity
        )
        if self.training:
            aux = self.importance_weight * importance_loss(logits)
            if noisy and self.load_weight > 0:
                aux = aux + self.load_weight * load_loss(logits, routed, self.noise_std, self.k)
            self.last_aux_loss = aux
        else:
            self.last_aux_loss = None
        return out.reshape(batch, tokens_per_image, width)

    def _experts(self, buffer: torch.Tensor) -> torch.Tensor:
        # (E, S, width) -> (E, S, width), every expert on its own rows, in two bmm calls.
        hidden = self.act(torch.baddbmm(self.b1, buffer, self.w1))
        return torch.baddbmm(self.b2, hidden, self.w2)

    def _index_moe(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        groups, tokens, width = x.shape
        num_experts, k, capacity = self.num_experts, self.k, routing.capacity
        slots = groups * num_experts * capacity
        kept = routing.slot >= 0
        group = torch.arange(groups, device=x.device).view(groups, 1, 1)
        # Flat buffer row of every (token, choice); a dropped choice points at the extra row.
        row = (group * num_experts + routing.expert) * capacity + routing.slot
        row = torch.where(kept, row, slots)
        source = group * tokens + torch.arange(tokens, device=x.device).view(1, tokens, 1)
        # Which token fills each buffer row; empty rows read an appended zero token.
        filler = torch.full((slots + 1,), groups * tokens, dtype=torch.long, device=x.device)
        filler.scatter_(0, row.flatten(), source.expand_as(row).flatten())
        padded = torch.cat([x.reshape(groups * tokens, width), x.new_zeros(1, width)])
        buffer = padded.index_select(0, filler[:slots])
        buffer = buffer.view(groups, num_experts, capacity, width).transpose(0, 1)
        out = self._experts(buffer.reshape(num_experts, groups * capacity, width))
        out = out.view(num_experts, groups, capacity, width).transpose(0, 1)
        out = torch.cat([out.reshape(slots, width), out.new_zeros(1, width)])
        picked = out.index_select(0, row.flatten()).view(groups, tokens, k, width)
        weight = torch.where(kept, routing.gate, 0.0).to(picked.dtype)
        return (picked * weight.unsqueeze(-1)).sum(dim=2)

    def _einsum_moe(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        groups, tokens, width = x.shape
        num_experts, capacity = self.num_experts, routing.capacity
        kept = routing.slot >= 0
        # (G, T, k, E) x (G, T, k, C) summed over k: one-hot of each kept (expert, slot) pair.
        expert_hot = F.one_hot(routing.expert, num_experts).to(x.dtype)
        slot_hot = F.one_hot(routing.slot.clamp(min=0), capacity).to(x.dtype)
        slot_hot = slot_hot * kept.unsqueeze(-1).to(x.dtype)
        dispatch = torch.einsum("gtke,gtkc->gtec", expert_hot, slot_hot)
        combine = torch.einsum("gtke,gtkc,gtk->gtec", expert_hot, slot_hot, routing.gate)
        buffer = torch.einsum("gtec,gtd->egcd", dispatch, x)
        out = self._experts(buffer.reshape(num_experts, groups * capacity, width))
        out = out.view(num_experts, groups, capacity, width)
        return torch.einsum("gtec,egcd->gtd", combine.to(out.dtype), out)

    def extra_repr(self) -> str:
        """Summarise the layer for ``print(model)``."""
        return (
            f"width={self.width}, hidden={self.hidden}, num_experts={self.num_experts}, "
            f"k={self.k}, capacity_factor_train={self.capacity_factor_train}, "
            f"capacity_factor_eval={self.capacity_factor_eval}, group_size={self.group_size}, "
            f"dispatch={self.dispatch!r}"
        )


def _check_capacity(value: float, what: str) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ConfigError(
            f"{what} must be a positive number (1.0 serves every choice of a balanced load; "
            f"lower values drop the least confident tokens), got {value!r}"
        )


def moe_layers(model: nn.Module) -> list[MoEMlp]:
    """Return every :class:`MoEMlp` inside ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, MoEMlp)]


def set_capacity(model: nn.Module, capacity_factor: float) -> int:
    """Set the eval-mode capacity factor of every MoE layer of ``model``.

    Lower values trade quality for compute at test time: Batch Prioritized Routing drops the
    least confident tokens first. The model's ``config`` (a ``BuildingModel``'s) is updated too,
    so a checkpoint saved afterwards keeps the setting.

    Args:
        model: A model with MoE layers (e.g. a ``BuildingModel`` named ``vmoe_*``).
        capacity_factor: The new eval capacity factor (> 0).

    Returns:
        The number of MoE layers changed.

    Raises:
        ConfigError: ``model`` has no MoE layers, or the factor is not positive.
    """
    _check_capacity(capacity_factor, "the MoE capacity factor")
    layers = moe_layers(model)
    if not layers:
        name = getattr(model, "name", type(model).__name__)
        raise ConfigError(
            f"model {name!r} has no mixture-of-experts layers, so a MoE capacity does not apply "
            "to it; drop the capacity option or use a V-MoE model (vmoe_*)"
        )
    for layer in layers:
        layer.capacity_factor_eval = float(capacity_factor)
    config = getattr(model, "config", None)
    if isinstance(config, dict) and "capacity_factor_eval" in config:
        config["capacity_factor_eval"] = float(capacity_factor)
    return len(layers)
