"""``recis.nn.functional.fused_ops``: one kernel call over many feature tensors.

The ``_gpu`` names are RecIS's; here they run on CPU tensors too. Every function takes lists
and returns one output per input (``fused_multi_hash``: ``len(muls[i])`` outputs per input,
flattened; ``fused_ids_encode_gpu``: one concatenated tensor).
"""
from __future__ import annotations

from typing import List, Union

import torch

from recis_compat.backend.children import encode_ids
from recis_compat.ops.features import as_int_list
from recis_compat.ops import features as _F


def fused_bucketize_gpu(values: List[torch.Tensor],
                        boundaries: List[torch.Tensor]) -> List[torch.Tensor]:
    """Floating ``values[i]`` (any shape), sorted float32 ``boundaries[i]`` -> int64 bucket
    index = number of boundaries ``<= value``; NaN -> ``len(boundaries[i])``."""
    if len(values) != len(boundaries):
        raise ValueError(f"fused_bucketize_gpu: {len(values)} values but {len(boundaries)} "
                         "boundaries")
    return _F.fused_bucketize(values, boundaries)


def fused_uint64_mod_gpu(values: List[torch.Tensor],
                         mods: Union[List[int], torch.Tensor]) -> List[torch.Tensor]:
    """int64 ``values[i]`` -> ``uint64(values[i]) % mods[i]`` as int64 (same shape)."""
    mods = as_int_list(mods)
    if len(mods) != len(values):
        raise ValueError(f"fused_uint64_mod_gpu: {len(values)} values but {len(mods)} mods")
    return _F.fused_uint64_mod(values, mods)


def fused_ids_encode_gpu(ids_list: List[torch.Tensor],
                         table_ids: Union[List[int], torch.Tensor]) -> torch.Tensor:
    """One int64 tensor: ``cat([(ids & (2**52-1)) | (table_id << 52) for each input])``."""
    table_ids = as_int_list(table_ids)
    if len(table_ids) != len(ids_list):
        raise ValueError(f"fused_ids_encode_gpu: {len(ids_list)} id tensors but "
                         f"{len(table_ids)} table ids")
    if not ids_list:
        return torch.zeros(0, dtype=torch.int64)
    bad = [t for t in table_ids if not 0 <= t < 4096]
    if bad:
        raise ValueError(f"fused_ids_encode_gpu: table id must be in [0, 4096), got {bad[0]}")
    return torch.cat([encode_ids(ids.reshape(-1).to(torch.int64), t) for ids, t in zip(ids_list, table_ids)])


def fused_multi_hash(inputs: List[torch.Tensor], muls, primes,
                     bucket_nums) -> List[torch.Tensor]:
    """int64 ``inputs[i]`` -> ``len(muls[i])`` tensors each; flat list in input order.
    Hash j: ``(((x*muls[i][j]) % primes[i][j] + p) % p) % bucket_nums[i][j]`` (C semantics)."""
    return _F.fused_multi_hash(inputs, muls, primes, bucket_nums)
