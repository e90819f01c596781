"""``recis.nn.functional.hash_ops``: string hashes over ragged int8 bytes.

``inputs[k]`` holds the concatenated bytes; ``splits[k]`` is its **offsets** tensor (string j is
``inputs[k][splits[k][j]:splits[k][j+1]]``). Each returns a list of int64 tensors with one hash per
string: FarmHash Fingerprint64 / MurmurHash64A (seed 0), raw 64 bits reinterpreted as int64.
"""
from __future__ import annotations

from typing import List

import torch

from recis_compat.ops import hashing as _H


def _hash(inputs, splits, kind: str) -> List[torch.Tensor]:
    inputs, splits = list(inputs), list(splits)
    if len(inputs) != len(splits):
        raise ValueError(f"{kind}hash: {len(inputs)} inputs but {len(splits)} splits")
    if not inputs:
        return []
    return _H.fused_hash_bytes(inputs, splits, kind, [-1] * len(inputs))


def farmhash(inputs: List[torch.Tensor], splits: List[torch.Tensor]) -> List[torch.Tensor]:
    """FarmHash Fingerprint64 of every segment ``[splits[k][j], splits[k][j+1])``."""
    return _hash(inputs, splits, "farm")


def murmurhash(inputs: List[torch.Tensor], splits: List[torch.Tensor]) -> List[torch.Tensor]:
    """MurmurHash64A (seed 0) of every segment ``[splits[k][j], splits[k][j+1])``."""
    return _hash(inputs, splits, "murmur")
