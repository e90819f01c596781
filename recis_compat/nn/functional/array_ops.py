"""``recis.nn.functional.array_ops``: element-wise id/value transforms on dense tensors.

* :func:`bucketize` -- floating input of any shape -> int64 bucket index (number of boundaries
  ``<= value``; NaN -> ``len(boundaries)``). Boundaries are cast to the input's dtype and device.
* :func:`bucketize_mod` -- int64 input, ``uint64(x) % bucket`` -> int64, shape kept.
* :func:`multi_hash` -- int64 input -> list of 4 (one per ``muls`` entry) int64 tensors
  ``(((x*mul) % p + p) % p) % bucket`` (IDMultiHash's rule; RecIS's own version is broken).
"""
from __future__ import annotations

from typing import List, Sequence

import torch

from recis_compat.ops import features as _F


def bucketize(input: torch.Tensor, boundaries) -> torch.Tensor:
    """int64 tensor of ``input``'s shape: number of ``boundaries <= input`` (``right=True``)."""
    if not isinstance(input, torch.Tensor) or not input.is_floating_point():
        raise TypeError("bucketize: input must be a floating-point tensor, got "
                        f"{getattr(input, 'dtype', type(input))}")
    if not isinstance(boundaries, torch.Tensor):
        boundaries = torch.tensor(boundaries, dtype=torch.float32)
    boundaries = boundaries.to(device=input.device, dtype=input.dtype)
    return _F.fused_bucketize([input], [boundaries])[0]


def bucketize_mod(input: torch.Tensor, bucket: int) -> torch.Tensor:
    """``uint64(input) % bucket`` as int64 (negative ids via two's complement); shape kept."""
    if not isinstance(input, torch.Tensor) or input.dtype != torch.int64:
        raise TypeError(f"bucketize_mod: input must be int64, got "
                        f"{getattr(input, 'dtype', type(input))}")
    if isinstance(bucket, torch.Tensor):
        bucket = int(bucket.item())
    return _F.fused_uint64_mod([input], [int(bucket)])[0]


def multi_hash(input: torch.Tensor, muls: Sequence[int], primes: Sequence[int],
               bucket_num: Sequence[int]) -> List[torch.Tensor]:
    """One int64 tensor (input's shape) per hash ``j``:
    ``(((x*muls[j]) % primes[j] + primes[j]) % primes[j]) % bucket_num[j]``."""
    if not isinstance(input, torch.Tensor) or input.dtype != torch.int64:
        raise TypeError(f"multi_hash: input must be int64, got "
                        f"{getattr(input, 'dtype', type(input))}")
    return _F.fused_multi_hash([input], [muls], [primes], [bucket_num])
