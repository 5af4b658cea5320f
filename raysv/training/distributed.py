"""Collectives used inside Ray Train workers (torch.distributed, gloo or NCCL)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def where(device) -> dict[str, str]:
    """``{"device": "cuda:0", "backend": "nccl"}``: where this worker's step runs and its
    process group's backend (``"none"`` outside one), for the epoch summary."""
    backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else "none"
    return {"device": str(device), "backend": str(backend)}


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` ``(B, ...)`` from all ranks along dim 0, keeping gradients.

    Every rank gets the global batch ``(W*B, ...)`` in rank order; the backward
    pass sums each rank's gradient into the owner's slice, so a loss computed
    identically on every rank and averaged by DDP yields the gradient of the
    global-batch loss. All ranks must pass the same shape.
    """
    _, size = world()
    if size == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather without gradient (ids, statistics): ``(B, ...) -> (W*B, ...)``."""
    _, size = world()
    if size == 1:
        return x
    out = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over all ranks (in place, no gradient); ``x`` itself on one rank."""
    _, size = world()
    if size > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x
