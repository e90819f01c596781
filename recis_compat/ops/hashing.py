"""String hashing ops: FarmHash Fingerprint64 and MurmurHash64A over ragged bytes.

``hash_bytes(data, offsets, hash_type, bucket=-1)``
    data: uint8/int8 ``[nbytes]``; offsets: int32/int64 ``[n+1]`` -> int64 ``[n]``.
    ``bucket=-1`` returns the raw 64-bit hash reinterpreted as int64 (RecIS ``Hash`` op);
    ``0`` masks to 63 bits and ``>0`` takes ``uint64 % bucket`` (the ORC reader's rule).

The tests' second opinion (plain Python over ``bytes``) is in ``tests/ops/reference_kernels.py``.
"""
from __future__ import annotations

from typing import List, Sequence

import torch

HASH_TYPES = ("farm", "murmur")


@torch.library.register_fake("recis_compat::hash_bytes")
def _hash_bytes_fake(data, offsets, hash_type, bucket=-1):
    return offsets.new_empty((offsets.shape[0] - 1,), dtype=torch.int64)


@torch.library.register_fake("recis_compat::fused_hash_bytes")
def _fused_hash_bytes_fake(data, offsets, hash_type, buckets):
    return [o.new_empty((o.shape[0] - 1,), dtype=torch.int64) for o in offsets]


def _check_hash_type(hash_type: str) -> None:
    if hash_type not in HASH_TYPES:
        raise ValueError(f"hash_type must be 'farm' or 'murmur', got {hash_type!r}")


def hash_bytes(data: torch.Tensor, offsets: torch.Tensor, hash_type: str,
               bucket: int = -1) -> torch.Tensor:
    """Hash each string ``data[offsets[k]:offsets[k+1]]``; see module docstring."""
    _check_hash_type(hash_type)
    return torch.ops.recis_compat.hash_bytes(data, offsets, hash_type, bucket)


def fused_hash_bytes(data: Sequence[torch.Tensor], offsets: Sequence[torch.Tensor],
                     hash_type: str, buckets: Sequence[int]) -> List[torch.Tensor]:
    """One kernel call hashing several ragged byte columns (one output per input)."""
    _check_hash_type(hash_type)
    return torch.ops.recis_compat.fused_hash_bytes(list(data), list(offsets), hash_type,
                                                    [int(b) for b in buckets])
