"""BatchNorm over the global batch when several ranks train one model.

Alone, a rank's BatchNorm layers take their statistics over its own chips; with ``--nproc 2``
at batch 4 that is 4 chips where one process at batch 8 sees 8, and the model trained that way
scored lower (bench/train_shards.md). PyTorch's ``SyncBatchNorm`` fixes that on GPUs but
refuses CPU tensors (and would drop the activation of timm's ``BatchNormAct2d``), so the layers
here do it on any device with one differentiable all-reduce per layer (gloo or NCCL) of the
sums that give the global mean and variance. Its backward all-reduces the gradients of those
sums, so every rank's input gradient is the one a single process over the whole batch would
compute.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from timm.layers import BatchNormAct2d
from torch import nn


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward all-reduces the gradient: every rank's statistics feed
    every rank's loss. (``torch.distributed.nn.functional.all_reduce`` did this; it is deprecated
    and its successor in ``_functional_collectives`` is private.)"""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # noqa: D102
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total


def _global_batch_norm(layer: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``layer``'s training-mode batch norm of ``x`` with statistics over every rank's batch;
    updates the running statistics as one process would."""
    xf = x.float()
    dims = (0, 2, 3)
    # one all-reduce of the sums of x - k and (x - k)^2: k, the running mean (the same on every
    # rank), keeps the variance E[(x - k)^2] - E[x - k]^2 clear of cancellation
    k = xf.new_zeros(xf.shape[1])
    if layer.track_running_stats:
        k = layer.running_mean.detach().float()
    shifted = xf - k.view(1, -1, 1, 1)
    count = xf.new_tensor([xf.numel() / xf.shape[1]])
    sums = torch.cat([shifted.sum(dims), (shifted * shifted).sum(dims), count])
    total = _SumOverRanks.apply(sums)
    channels, n = xf.shape[1], total[-1]
    offset = total[:channels] / n
    var = (total[channels : 2 * channels] / n - offset * offset).clamp(min=0)
    mean = k + offset
    centred = shifted - offset.view(1, -1, 1, 1)
    y = centred * torch.rsqrt(var + layer.eps).view(1, -1, 1, 1)
    if layer.affine:
        y = y * layer.weight.view(1, -1, 1, 1) + layer.bias.view(1, -1, 1, 1)
    if layer.track_running_stats:
        with torch.no_grad():
            layer.num_batches_tracked.add_(1)
            factor = layer.momentum
            if factor is None:  # a cumulative average, as nn.BatchNorm2d keeps
                factor = 1.0 / float(layer.num_batches_tracked)
            unbiased = var * (n / (n - 1).clamp(min=1))
            layer.running_mean.lerp_(mean.to(layer.running_mean.dtype), factor)
            layer.running_var.lerp_(unbiased.to(layer.running_var.dtype), factor)
    return y.to(x.dtype)


def _synced() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training statistics span every rank."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Batch norm of ``x``; over all ranks' batches while training in a process group."""
        if not (self.training and _synced()):
            return super().forward(x)
        return _global_batch_norm(self, x)


class GlobalBatchNormAct2d(BatchNormAct2d):
    """timm's ``BatchNormAct2d`` (batch norm, dropout, activation) with global statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Batch norm of ``x`` over all ranks' batches while training, then drop and act."""
        if not (self.training and _synced()):
            return super().forward(x)
        return self.act(self.drop(_global_batch_norm(self, x)))


def sync_batch_norm(model: nn.Module) -> nn.Module:
    """``model``, its 2-D BatchNorm layers now taking their statistics over all ranks.

    Each layer changes class in place to its global counterpart, which adds no state, so the
    parameters, buffers, optimizer and checkpoint keys stay as they were, and so does every
    other holder of the model (validation, EMA, export). In eval mode, or alone, the layers are
    the plain ones.
    """
    for module in model.modules():
        # exact types: a subclass of these may compute something else in its forward
        if type(module) is BatchNormAct2d:
            module.__class__ = GlobalBatchNormAct2d
        elif type(module) is nn.BatchNorm2d:
            module.__class__ = GlobalBatchNorm2d
    return model
