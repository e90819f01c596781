"""Ragged <-> dense/sparse conversions used by :class:`RaggedTensor`.

``ragged_to_dense`` / ``dense_to_ragged`` run the csrc kernels (``recis_compat::ragged_to_dense``,
differentiable w.r.t. floating values, and ``recis_compat::dense_to_ragged``) through
:mod:`recis_compat.ops.features`; the pure-PyTorch versions stay there as ``*_ref`` references.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

from recis_compat.ops import features as _F


def ragged_coordinates(num_values: int, offsets: Sequence[torch.Tensor]) -> torch.Tensor:
    """int64 ``[len(offsets)+1, num_values]``: the dense coordinates of every value."""
    return _F.ragged_coordinates(num_values, list(offsets))


def dense_shape_of(offsets: Sequence[torch.Tensor]) -> List[int]:
    """``[B, max_len_1, ...]``: rows of offsets[0], then the longest row of each level."""
    return _F.dense_shape(list(offsets))


def ragged_to_dense(values: torch.Tensor, offsets: Sequence[torch.Tensor],
                    default_value: float = 0.0) -> torch.Tensor:
    """Pad a ragged tensor to dense ``[B, max_len_1, ..., *values.shape[1:]]``."""
    offsets = [offsets] if isinstance(offsets, torch.Tensor) else list(offsets)
    dts = {o.dtype for o in offsets}
    if len(dts) > 1:  # RaggedTensor levels may mix int32/int64; the kernel wants one dtype
        offsets = [o.to(torch.int64) for o in offsets]
    return _F.ragged_to_dense(values, offsets, default_value)


def dense_to_ragged(dense: torch.Tensor, check_invalid: bool = True,
                    invalid_value=0) -> Tuple[torch.Tensor, torch.Tensor]:
    """2-D ``[B, W]`` -> (values, int32 offsets ``[B+1]``), dropping each row's trailing
    ``invalid_value`` entries when ``check_invalid`` (inner ones are kept)."""
    if dense.dim() != 2:
        raise ValueError(f"dense_to_ragged expects a 2-D tensor, got shape {tuple(dense.shape)}")
    return _F.dense_to_ragged(dense, check_invalid, invalid_value)
