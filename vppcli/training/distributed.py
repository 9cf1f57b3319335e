"""Process-group helpers that are no-ops in a single (CPU) process."""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True inside an initialised torch.distributed process group."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def all_reduce_mean(value: Tensor) -> Tensor:
    """Mean of `value` over all ranks (a copy; `value` itself is left alone).

    Collective: every rank must call it, in the same order, with a tensor of the same shape.
    """
    if not is_distributed():
        return value.clone()
    reduced = value.clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced / dist.get_world_size()
