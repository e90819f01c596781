"""Ragged <-> dense/sparse conversions used by :class:`RaggedTensor`.

Vectorised torch implementations (no per-row Python loops). They double as the reference the
csrc kernels are tested against.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch


def _rows_of(positions: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Row index of each position under ``offsets`` (int64)."""
    return torch.searchsorted(offsets.to(torch.int64), positions, right=True) - 1


def ragged_coordinates(num_values: int, offsets: Sequence[torch.Tensor]) -> torch.Tensor:
    """int64 ``[len(offsets)+1, num_values]``: the dense coordinates of every value."""
    device = offsets[-1].device
    pos = torch.arange(num_values, dtype=torch.int64, device=device)
    coords: List[torch.Tensor] = []
    for off in reversed(offsets):
        off64 = off.to(torch.int64)
        row = _rows_of(pos, off64)
        coords.append(pos - off64[row])
        pos = row
    coords.append(pos)
    coords.reverse()
    return torch.stack(coords) if coords else pos.unsqueeze(0)


def dense_shape_of(offsets: Sequence[torch.Tensor]) -> List[int]:
    """``[B, max_len_1, ...]``: rows of offsets[0], then the longest row of each level."""
    shape = [offsets[0].shape[0] - 1]
    for off in offsets:
        shape.append(int((off[1:] - off[:-1]).max().item()) if off.numel() > 1 else 0)
    return shape


def ragged_to_dense(values: torch.Tensor, offsets: Sequence[torch.Tensor],
                    default_value: float = 0.0) -> torch.Tensor:
    """Pad a ragged tensor to dense ``[B, max_len_1, ..., *values.shape[1:]]``."""
    shape = dense_shape_of(offsets)
    trailing = list(values.shape[1:])
    out = torch.full(shape + trailing, default_value, dtype=values.dtype, device=values.device)
    n = values.shape[0]
    if n == 0 or out.numel() == 0:
        return out
    coords = ragged_coordinates(n, offsets)
    out[tuple(coords)] = values
    return out


def dense_to_ragged(dense: torch.Tensor, check_invalid: bool = True,
                    invalid_value=0) -> Tuple[torch.Tensor, torch.Tensor]:
    """2-D ``[B, W]`` -> (values, int32 offsets ``[B+1]``), dropping each row's trailing
    ``invalid_value`` entries when ``check_invalid`` (inner ones are kept)."""
    if dense.dim() != 2:
        raise ValueError(f"dense_to_ragged expects a 2-D tensor, got shape {tuple(dense.shape)}")
    b, w = dense.shape
    if check_invalid:
        valid = dense != invalid_value
        col = torch.arange(1, w + 1, device=dense.device).expand(b, w)
        lengths = torch.where(valid, col, torch.zeros_like(col)).amax(dim=1) if w else \
            torch.zeros(b, dtype=torch.int64, device=dense.device)
    else:
        lengths = torch.full((b,), w, dtype=torch.int64, device=dense.device)
    keep = torch.arange(w, device=dense.device).expand(b, w) < lengths.unsqueeze(1)
    values = dense[keep]
    offsets = torch.zeros(b + 1, dtype=torch.int32, device=dense.device)
    offsets[1:] = torch.cumsum(lengths, 0).to(torch.int32)
    return values, offsets
