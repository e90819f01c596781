"""Merging the ids of an EmbeddingEngine group (csrc/embedding/coalesce.cpp).

``coalesce_ids(values, offsets, children) -> (ids, offsets)``: for features ``k`` with 1-D int64
``values[k]`` ``[N_k]``, offsets ``offsets[k]`` (int32/int64, ``[B_k + 1]``) and child index
``children[k]`` in ``[0, 4096)``::

    ids     = cat_k((values[k] & (2**52 - 1)) | (children[k] << 52))        int64 [sum N_k]
    offsets = cat(offsets[0], offsets[k][1:] + N_0 + ... + N_{k-1} for k >= 1)  int64 [1 + sum B_k]

CPU runs the csrc kernel; CUDA the same result from ATen ops (registered in the same file).
The pure-torch reference the tests compare against is in ``tests/ops/reference_kernels.py``.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch


@torch.library.register_fake("recis_compat::coalesce_ids")
def _coalesce_ids_fake(values, offsets, children):
    n_ids = sum(v.shape[0] for v in values)
    n_off = offsets[0].shape[0] + sum(o.shape[0] - 1 for o in offsets[1:])
    return values[0].new_empty((n_ids,)), values[0].new_empty((n_off,))


def coalesce_ids(values: Sequence[torch.Tensor], offsets: Sequence[torch.Tensor],
                 children: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """The merged ``(ids, offsets)`` of one group (see the module docstring)."""
    if len(values) == 0:   # the dispatcher cannot route an op call without tensors
        raise ValueError("coalesce_ids: needs at least one feature")
    return torch.ops.recis_compat.coalesce_ids(list(values), list(offsets), [int(c) for c in children])
