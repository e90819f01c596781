"""String hashing ops: FarmHash Fingerprint64 and MurmurHash64A over ragged bytes.

``hash_bytes(data, offsets, hash_type, bucket=-1)``
    data: uint8/int8 ``[nbytes]``; offsets: int32/int64 ``[n+1]`` -> int64 ``[n]``.
    ``bucket=-1`` returns the raw 64-bit hash reinterpreted as int64 (RecIS ``Hash`` op);
    ``0`` masks to 63 bits and ``>0`` takes ``uint64 % bucket`` (the ORC reader's rule).

The reference functions below are plain Python over ``bytes`` and are the tests' second opinion.
"""
from __future__ import annotations

from typing import List, Sequence

import torch

_M64 = (1 << 64) - 1
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


# ----------------------------------------------------------------------------- references
def _to_signed(h: int) -> int:
    return h - (1 << 64) if h >= (1 << 63) else h


def murmur64a_ref(data: bytes, seed: int = 0) -> int:
    """MurmurHash64A as an unsigned Python int (reference, slow)."""
    m, r = 0xC6A4A7935BD1E995, 47
    n = len(data)
    h = (seed ^ (n * m)) & _M64
    nwords = n // 8
    for i in range(nwords):
        k = int.from_bytes(data[8 * i:8 * i + 8], "little")
        k = (k * m) & _M64
        k ^= k >> r
        k = (k * m) & _M64
        h ^= k
        h = (h * m) & _M64
    tail = data[8 * nwords:]
    if tail:
        for i, b in enumerate(tail):
            h ^= b << (8 * i)
        h = (h * m) & _M64
    h ^= h >> r
    h = (h * m) & _M64
    h ^= h >> r
    return h


def bucket_ref(h: int, bucket: int) -> int:
    """Apply the reader's bucket rule to an unsigned hash (see module docstring)."""
    if bucket < 0:
        return _to_signed(h)
    if bucket == 0:
        return h & 0x7FFFFFFFFFFFFFFF
    return h % bucket


def hash_strings_ref(strings: Sequence[bytes], hash_type: str, bucket: int = -1) -> List[int]:
    """Reference for :func:`hash_bytes`; farm uses ``pyfarmhash`` (a test-only oracle)."""
    _check_hash_type(hash_type)
    if hash_type == "farm":
        import farmhash  # pyfarmhash, installed for tests
        return [bucket_ref(farmhash.fingerprint64(s), bucket) for s in strings]
    return [bucket_ref(murmur64a_ref(s), bucket) for s in strings]
