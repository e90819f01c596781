"""RecIS's row partition rule: which rank owns an id.

The id space is cut into ``SLICE_SIZE = 65536`` slices by ``id & 0xFFFF`` (the low 16 bits, i.e.
``uint64(id) % 65536``); rank ``r`` of ``W`` owns the contiguous slice range
``[bounds[r], bounds[r+1])``, the first ``65536 % W`` ranges holding one extra slice
(``recis.nn.modules.hashtable.gen_slice``).
"""
from __future__ import annotations

from typing import List, Tuple

import torch

SLICE_SIZE = 65536
SLICE_MASK = SLICE_SIZE - 1

__all__ = ["SLICE_SIZE", "slice_boundaries", "slice_range", "owner_ranks"]


def slice_boundaries(world_size: int, slice_size: int = SLICE_SIZE) -> List[int]:
    """``[b_0=0, b_1, ..., b_W=slice_size]``: rank r owns slices ``[b_r, b_{r+1})``."""
    if int(world_size) < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    m, n = divmod(int(slice_size), int(world_size))
    bounds = [0]
    for r in range(int(world_size)):
        bounds.append(bounds[-1] + m + (1 if r < n else 0))
    return bounds


def slice_range(rank: int, world_size: int, slice_size: int = SLICE_SIZE) -> Tuple[int, int]:
    """``(begin, end)`` slice range of ``rank``."""
    if not 0 <= int(rank) < int(world_size):
        raise ValueError(f"rank {rank} not in [0, {world_size})")
    b = slice_boundaries(world_size, slice_size)
    return b[rank], b[rank + 1]


def owner_ranks(ids: torch.Tensor, world_size: int) -> torch.Tensor:
    """Owning rank (int64, same shape) of every int64 id."""
    if int(world_size) == 1:
        return torch.zeros_like(ids)
    inner = torch.tensor(slice_boundaries(world_size)[1:-1], dtype=torch.int64, device=ids.device)
    return torch.bucketize(ids & SLICE_MASK, inner, right=True)
