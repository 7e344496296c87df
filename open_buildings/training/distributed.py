"""Data-parallel training: ``ob-train --nproc N`` and ``torchrun``.

PyTorch does the work: ``torch.distributed.launcher.elastic_launch`` (the engine behind
``torchrun --standalone``) starts the processes, ``init_process_group`` reads the
``torchrun`` environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``), and ``DistributedDataParallel`` all-reduces the gradients. A multi-node job is
``torchrun --nnodes ... -m open_buildings.commands.train CONFIG``; ``deploy/training.md`` has
the recipe. gloo on CPUs, NCCL on GPUs.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process among the data-parallel ones (``world`` 1: training alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def main(self) -> bool:
        """Whether this process writes checkpoints, validates and reports."""
        return self.rank == 0


#: a process training alone
ALONE = Ranks()


def from_env() -> Ranks:
    """The ranks ``torchrun`` (or :func:`launch`) set in the environment; alone when unset."""
    env = os.environ
    return Ranks(
        int(env.get("RANK", 0)),
        int(env.get("WORLD_SIZE", 1)),
        int(env.get("LOCAL_RANK", 0)),
        int(env.get("LOCAL_WORLD_SIZE", 1)),
    )


def start(ranks: Ranks, device: torch.device) -> None:
    """Join the process group (gloo on a CPU, NCCL on a GPU) when there is more than one rank."""
    if ranks.world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(ranks.local_rank)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def device_for(ranks: Ranks, device: torch.device) -> torch.device:
    """Each local rank's own GPU (``cuda:LOCAL_RANK``); the CPU stays the CPU."""
    if device.type == "cuda" and ranks.world > 1:
        return torch.device("cuda", ranks.local_rank)
    return device


def wrap(model: torch.nn.Module, ranks: Ranks, sync_norm: bool = True) -> torch.nn.Module:
    """The model under DistributedDataParallel when there are several ranks, else itself;
    ``sync_norm``: its BatchNorm layers then take statistics over every rank's batch."""
    if ranks.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if sync_norm:
        from open_buildings.training.sync_norm import sync_batch_norm

        sync_batch_norm(model)

    return DistributedDataParallel(model)


def mean(value: float, ranks: Ranks) -> float:
    """The mean of ``value`` over the ranks (a step's loss, as one rank at the global batch
    would report it)."""
    if ranks.world == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor.item() / ranks.world)


def mean_tensor(value: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The mean of a tensor over the ranks (no gradient flows through it)."""
    if ranks.world == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / ranks.world


def from_main(value: Any, ranks: Ranks) -> Any:
    """Rank 0's ``value`` on every rank (a decision to stop, made where validation runs)."""
    if ranks.world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ranks: Ranks) -> None:
    """Wait for every rank."""
    if ranks.world > 1:
        dist.barrier()


def finish(ranks: Ranks) -> None:
    """Leave the process group."""
    if ranks.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def launch(nproc: int, entry, *args: Any) -> Any:
    """Run ``entry(*args)`` in ``nproc`` processes on this machine, as ``torchrun --standalone``
    would; return rank 0's result.

    Raises:
        torch.distributed.elastic.multiprocessing.errors.ChildFailedError: a rank failed (the
            others are stopped).
    """
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.5,
    )
    results = elastic_launch(config, entry)(*args)
    return results[0]
