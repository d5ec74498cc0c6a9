"""Distributed data parallel helpers: detect `torchrun`, set up the process group, reduce metrics.

The same script runs alone or under `torchrun --nproc-per-node N`: `RANK` and `WORLD_SIZE` in the environment turn
on DDP (NCCL on CUDA, gloo on the CPU); rank 0 writes every file and shows the progress bars.
"""
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ['DistInfo', 'init_distributed', 'cleanup_distributed', 'all_reduce_sum', 'all_reduce_max', 'all_ranks_true',
           'barrier',
           'broadcast_object', 'broadcast_buffers', 'replica_max_abs_diff', 'resolve_device']


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes:
        rank: Global rank.
        world_size: Number of processes.
        local_rank: Rank on this node.
        local_world_size: Processes on this node (for the CPU thread count).
        device: The device this process trains on.
        initialized_here: True if `init_distributed` created the process group (and should destroy it).
    """
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device('cpu')
    initialized_here: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str = 'auto', local_rank: int = 0) -> torch.device:
    """'auto' picks `cuda:<local_rank>` when CUDA is available, else the CPU; anything else goes to torch.device."""
    if device == 'auto':
        return torch.device(f'cuda:{local_rank}') if torch.cuda.is_available() else torch.device('cpu')
    dev = torch.device(device)
    if dev.type == 'cuda' and dev.index is None:
        dev = torch.device(f'cuda:{local_rank}')
    return dev


def init_distributed(device: str = 'auto', timeout_s: Optional[float] = None) -> DistInfo:
    """Initialise DDP when launched by `torchrun` (env `RANK`, `WORLD_SIZE`), else return a single-process info.

    Args:
        device: 'auto', 'cpu', 'cuda' or a full device string.
        timeout_s: Process group timeout in seconds (torch's default when None).
    """
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    if dist.is_available() and dist.is_initialized():  # the caller set up the group
        rank, world_size = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get('LOCAL_RANK', rank))
        local_world = int(os.environ.get('LOCAL_WORLD_SIZE', world_size))
        return DistInfo(rank, world_size, local_rank, local_world, resolve_device(device, local_rank), False)
    if world_size <= 1 or 'RANK' not in os.environ:
        return DistInfo(device=resolve_device(device))
    if not dist.is_available():
        raise RuntimeError('WORLD_SIZE > 1 but this torch build has no torch.distributed')
    rank = int(os.environ['RANK'])
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    local_world = int(os.environ.get('LOCAL_WORLD_SIZE', str(world_size)))
    dev = resolve_device(device, local_rank)
    backend = 'nccl' if dev.type == 'cuda' else 'gloo'
    if dev.type == 'cuda':
        torch.cuda.set_device(dev)
    kwargs = {}
    if timeout_s is not None:
        from datetime import timedelta
        kwargs['timeout'] = timedelta(seconds=timeout_s)
    dist.init_process_group(backend=backend, init_method='env://', rank=rank, world_size=world_size, **kwargs)
    return DistInfo(rank, world_size, local_rank, local_world, dev, True)


def cleanup_distributed(info: DistInfo) -> None:
    """Destroy the process group if `init_distributed` created it."""
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op in a single process)."""
    if info.distributed:
        dist.barrier()


def all_reduce_sum(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of `x` over ranks (a new tensor; `x` itself in a single process)."""
    if not info.distributed:
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def all_reduce_max(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Maximum of `x` over ranks."""
    if not info.distributed:
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


def all_ranks_true(flags: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Bool `flags` and-ed over ranks, so that every rank takes the same decision (`flags` in a single process)."""
    if not info.distributed:
        return flags
    x = flags.to(torch.int32)  # gloo and NCCL reduce integers, not bools
    dist.all_reduce(x, op=dist.ReduceOp.MIN)
    return x.bool()


def broadcast_object(obj, info: DistInfo, src: int = 0):
    """Rank `src`'s picklable object on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@torch.no_grad()
def broadcast_buffers(model: nn.Module, info: DistInfo, src: int = 0) -> None:
    """Copy rank `src`'s buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts buffers at the start of each forward, so after the last step of an epoch every rank holds running
    statistics updated with its own batch; call this before evaluating or saving so all ranks hold rank 0's model.
    """
    if info.distributed:
        for b in model.buffers():
            dist.broadcast(b, src=src)


@torch.no_grad()
def replica_max_abs_diff(model: nn.Module, info: DistInfo) -> float:
    """Largest absolute difference between this model's parameters and buffers and rank 0's, over all ranks.

    0.0 means every replica holds the same weights (DDP's invariant); a single process always gives 0.0.
    """
    if not info.distributed:
        return 0.0
    worst = torch.zeros((), dtype=torch.float64, device=info.device)
    for t in list(model.parameters()) + list(model.buffers()):
        ref = t.detach().clone()
        dist.broadcast(ref, src=0)
        if t.is_floating_point():
            worst = torch.maximum(worst, (t.detach() - ref).abs().max().to(torch.float64))
        else:
            worst = torch.maximum(worst, (t.detach() != ref).any().to(torch.float64))
    return float(all_reduce_max(worst, info).item())
