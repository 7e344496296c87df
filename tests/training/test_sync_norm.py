"""Global BatchNorm (``training.sync_norm``): two gloo ranks, each with half a batch, compute
what one process computes over the whole batch: outputs, input and parameter gradients, running
statistics. The ranks run in a process of their own (the elastic launcher leaves threads in the
process that calls it)."""

import subprocess
import sys
from pathlib import Path

import torch
from timm.layers import BatchNormAct2d
from torch import nn

from open_buildings.training.sync_norm import GlobalBatchNorm2d, GlobalBatchNormAct2d

WORLD = 2


def _net() -> nn.Sequential:
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        BatchNormAct2d(6, act_layer=nn.ReLU),
        nn.Conv2d(6, 4, 3, padding=1),
        nn.BatchNorm2d(4, momentum=None),  # the cumulative average too
    )
    with torch.no_grad():  # affine parameters away from 1 and 0, so their gradients matter
        for norm in (net[1], net[3]):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    return net


def _batch() -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    # far from zero mean, and unlike across the halves: the two ranks' statistics differ
    x = torch.randn(8, 3, 10, 10, generator=generator) * 2 + 3
    x[4:] *= 3
    return x


def _step(net: nn.Module, x: torch.Tensor, total: int) -> dict:
    x = x.clone().requires_grad_(True)
    outputs = [net(x) for _ in range(2)]  # two steps: the running statistics move twice
    loss = sum(((y - 0.3) ** 2).sum() for y in outputs) / total
    loss.backward()
    return {
        "y": outputs[-1].detach(),
        "x_grad": x.grad,
        "grads": [p.grad.clone() for p in net.parameters()],
        "buffers": [b.clone() for b in net.buffers()],
    }


def _rank() -> dict:
    from open_buildings.training import distributed
    from open_buildings.training.sync_norm import sync_batch_norm

    ranks = distributed.from_env()
    distributed.start(ranks, torch.device("cpu"))
    net = sync_batch_norm(_net())
    x = _batch().chunk(WORLD)[ranks.rank]
    result = _step(net, x, total=_batch()[:, :1].numel() * 4)
    for grad in result["grads"]:  # what DistributedDataParallel sums (and then averages)
        torch.distributed.all_reduce(grad)
    distributed.finish(ranks)
    return result


def _launch(out: str) -> None:
    from open_buildings.training.distributed import launch

    torch.save(launch(WORLD, _rank), out)


def test_two_ranks_with_half_a_batch_each_compute_one_process_over_the_whole(
    tmp_path: Path,
) -> None:
    out = tmp_path / "rank0.pt"
    code = f"from tests.training.test_sync_norm import _launch; _launch({str(out)!r})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    ranked = torch.load(out)
    whole = _step(_net(), _batch(), total=_batch()[:, :1].numel() * 4)

    assert torch.allclose(ranked["y"], whole["y"][:4], atol=1e-5)
    assert torch.allclose(ranked["x_grad"], whole["x_grad"][:4], rtol=1e-4, atol=1e-7)
    for mine, theirs in zip(ranked["grads"], whole["grads"], strict=True):
        assert torch.allclose(mine, theirs, rtol=1e-4, atol=1e-6)
    for mine, theirs in zip(ranked["buffers"], whole["buffers"], strict=True):
        assert torch.allclose(mine.double(), theirs.double(), rtol=1e-5, atol=1e-6)
    # and the halves alone would not: rank 0's own statistics differ from the whole batch's
    alone = _step(_net(), _batch()[:4], total=_batch()[:, :1].numel() * 4)
    assert not torch.allclose(alone["y"], whole["y"][:4], atol=1e-2)


def test_the_layers_change_class_in_place_and_are_plain_outside_a_process_group() -> None:
    from open_buildings.training.sync_norm import sync_batch_norm

    net = _net()
    params = [id(p) for p in net.parameters()]
    keys = list(net.state_dict())
    assert sync_batch_norm(net) is net
    assert type(net[1]) is GlobalBatchNormAct2d and type(net[3]) is GlobalBatchNorm2d
    assert [id(p) for p in net.parameters()] == params and list(net.state_dict()) == keys
    x = _batch()
    assert torch.equal(net(x), _net()(x))  # no process group: the plain layers' forward
