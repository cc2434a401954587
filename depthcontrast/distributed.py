"""Cross-process helpers for the MoCo queue and batch shuffle; identity when no process group runs.

Device-agnostic: tensors stay on the device they come in on, so the same calls work with gloo
(CPU) and NCCL (GPU). Every rank must pass tensors of the same shape (the trainer drops last
partial batches).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

Batch = torch.Tensor | tuple[torch.Tensor, ...]  # a batch, or row-aligned tensors of one batch


@dataclass(frozen=True)
class WorldInfo:
    rank: int
    world_size: int


def world_info() -> WorldInfo:
    """This process's rank and the number of processes; (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return WorldInfo(dist.get_rank(), dist.get_world_size())
    return WorldInfo(0, 1)


@torch.no_grad()
def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` [B, ...] from every rank along dim 0, in rank order → [world·B, ...].

    No gradient flows through the result. With one process it is `tensor` itself.
    """
    world = world_info()
    if world.world_size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def batch_shuffle(x: Batch) -> tuple[Batch, torch.Tensor]:
    """Shuffle the global batch across ranks (MoCo "shuffle BN"): → (this rank's rows, idx_unshuffle).

    x is this rank's [B, ...], or a tuple of such tensors whose rows belong together (shuffled alike); the
    result is B rows of the gathered [world·B, ...] batch picked by a permutation drawn on rank 0 and
    broadcast, so BatchNorm statistics of the key encoder mix samples from every rank. With one process
    the permutation is local. Pass `idx_unshuffle` to `batch_unshuffle` to restore the order.
    """
    world = world_info()
    parts = x if isinstance(x, tuple) else (x,)
    gathered = [all_gather_no_grad(part) for part in parts]
    permutation = torch.randperm(gathered[0].shape[0], device=parts[0].device)
    if world.world_size > 1:
        dist.broadcast(permutation, src=0)
    mine = permutation.view(world.world_size, -1)[world.rank]
    shuffled = tuple(part[mine] for part in gathered)
    return (shuffled if isinstance(x, tuple) else shuffled[0]), torch.argsort(permutation)


@torch.no_grad()
def batch_unshuffle(x: torch.Tensor, idx_unshuffle: torch.Tensor) -> torch.Tensor:
    """Undo `batch_shuffle`: x is this rank's shuffled rows (or outputs computed from them) [B, ...]."""
    world = world_info()
    gathered = all_gather_no_grad(x)
    return gathered[idx_unshuffle.view(world.world_size, -1)[world.rank]]
