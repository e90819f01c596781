"""``recis.nn.functional.ragged_ops``: ragged-tensor kernels (RecIS 1.0; see COMPATIBILITY.md).

Offsets are 1-D int32/int64 tensors, outermost level first. All functions run on CPU and CUDA.
``ragged_tile`` lives with the embedding combiners, not here.
"""
from __future__ import annotations

import logging
from typing import List, Optional, Sequence, Tuple, Union

import torch

from recis_compat.ops.features import as_bool_list, as_int_list
from recis_compat.ops import features as _F

logger = logging.getLogger(__name__)

__all__ = ["dense_to_ragged", "ragged_to_sparse", "ragged_to_dense", "fused_ragged_cutoff_2D",
           "fused_ragged_cutoff_3D", "_fused_ragged_cutoff_3D", "feature_cross_ragged",
           "ragged_topk_index_cutoff"]


def _last(off) -> torch.Tensor:
    if isinstance(off, torch.Tensor):
        return off
    return list(off)[-1]


def dense_to_ragged(tensor: torch.Tensor, check_invalid: bool = True,
                    invalid_value=0) -> Tuple[torch.Tensor, torch.Tensor]:
    """2-D ``[B, W]`` -> ``(values [N], int32 offsets [B+1])``; each row's **trailing**
    ``invalid_value`` entries are dropped (inner ones kept) when ``check_invalid``."""
    if tensor.dim() != 2:
        raise ValueError(f"dense_to_ragged: expects a 2-D tensor, got shape {tuple(tensor.shape)}")
    return _F.dense_to_ragged(tensor, check_invalid, invalid_value)


def ragged_to_dense(values: torch.Tensor, offsets: Union[torch.Tensor, Sequence[torch.Tensor]],
                    default_value=0) -> torch.Tensor:
    """Dense ``[len(offsets[0])-1, maxlen_1, ..., *values.shape[1:]]`` of ``values``' dtype,
    missing positions ``default_value``. Offsets all int32 or all int64, on values' device."""
    offsets = [offsets] if isinstance(offsets, torch.Tensor) else list(offsets)
    if not offsets:
        raise ValueError("ragged_to_dense: at least one offsets tensor is required")
    dts = {o.dtype for o in offsets}
    if len(dts) != 1 or dts.pop() not in (torch.int32, torch.int64):
        raise TypeError("ragged_to_dense: offsets must be all int32 or all int64")
    for o in offsets:
        if o.dim() != 1:
            raise ValueError(f"ragged_to_dense: offsets must be 1-D, got {tuple(o.shape)}")
        if o.device != values.device:
            raise ValueError("ragged_to_dense: offsets and values must be on the same device")
    return _F.ragged_to_dense(values, offsets, default_value)


def ragged_to_sparse(values: torch.Tensor, row_splits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sparse COO tensor of shape ``[B, maxlen_1, ...]`` holding ``values`` at their ragged
    coordinates. Raises RuntimeError if any dimension of the shape is 0."""
    row_splits = [row_splits] if isinstance(row_splits, torch.Tensor) else list(row_splits)
    shape = _F.dense_shape(row_splits)
    if any(d == 0 for d in shape):
        raise RuntimeError(f"ragged_to_sparse: the dense shape {shape} has a zero dimension")
    coords = _F.ragged_coordinates(values.shape[0], row_splits)
    return torch.sparse_coo_tensor(coords, values, shape + list(values.shape[1:]))


def _keep_list(keep_lengths, n: int) -> List[int]:
    keep = as_int_list(keep_lengths)
    if len(keep) == 1 and n > 1:
        keep = keep * n
    if len(keep) != n:
        raise ValueError(f"ragged cutoff: {n} features but {len(keep)} keep_lengths")
    return keep


def _side_tensor(sides, n: int, device) -> torch.Tensor:
    return torch.tensor(as_bool_list(sides, n), dtype=torch.bool, device=device)


def fused_ragged_cutoff_2D(values: List[torch.Tensor], offsets: List[torch.Tensor],
                           keep_lengths, drop_sides, pad_sides,
                           weights: Optional[List[Optional[torch.Tensor]]] = None):
    """Cut each row of feature i to at most ``keep_lengths[i]`` values (only the **last**
    offsets level is used). ``drop_sides[i]=True`` drops from the left (keeps the last values).
    Values are never padded; ``pad_nums`` reports the shortfall.

    Returns ``(values_list, offsets_list, drop_nums_list, pad_nums_list, drop_sides,
    pad_sides)`` with int32 ``drop_nums``/``pad_nums`` of shape ``[B]``; when ``weights`` is
    given, a 7th item holds the weights truncated together with the values (None where absent).
    """
    values = list(values)
    n = len(values)
    offs = [_last(o) for o in offsets]
    if len(offs) != n:
        raise ValueError(f"fused_ragged_cutoff_2D: {n} values but {len(offs)} offsets")
    keep = _keep_list(keep_lengths, n)
    dev = values[0].device if n else torch.device("cpu")
    drop_t = drop_sides if isinstance(drop_sides, torch.Tensor) else _side_tensor(drop_sides, n, dev)
    pad_t = pad_sides if isinstance(pad_sides, torch.Tensor) else _side_tensor(pad_sides, n, dev)
    vs, os_, ws, ds, ps = _F.fused_ragged_cutoff_2d(values, offs, weights, keep,
                                                    as_bool_list(drop_t, n))
    if weights is not None:
        return vs, os_, ds, ps, drop_t, pad_t, ws
    return vs, os_, ds, ps, drop_t, pad_t


def _fused_ragged_cutoff_3D(values, outer_offsets, inner_offsets, keep_lengths,
                            drop_sides=None, pad_sides=None, weights=None):
    """Lists in, lists out: ``(values, outer, inner)`` (+ weights when given). Each row of
    feature i gets exactly ``keep_lengths[i]`` sub-lists; True sides mean left (default
    right/right); sub-lists are kept whole; ``outer = arange(0, (B+1)*keep, keep)``."""
    values = list(values)
    n = len(values)
    keep = _keep_list(keep_lengths, n)
    drop = as_bool_list(drop_sides, n)
    pad = as_bool_list(pad_sides, n)
    if any(drop) or any(pad):
        logger.warning("fused_ragged_cutoff_3D: a left drop/pad side is in use "
                       "(drop_sides=%s, pad_sides=%s)", drop, pad)
    vs, outer, inner, ws = _F.fused_ragged_cutoff_3d(values, outer_offsets, inner_offsets,
                                                     weights, keep, drop, pad)
    if weights is not None:
        return vs, outer, inner, ws
    return vs, outer, inner


def fused_ragged_cutoff_3D(values: List[torch.Tensor], offsets: List[Sequence[torch.Tensor]],
                           keep_lengths, drop_sides=None, pad_sides=None, weights=None):
    """``offsets[i] = [outer, inner]`` -> ``(values_list, [[outer, inner], ...])`` (+ weights
    list when ``weights`` is given). See :func:`_fused_ragged_cutoff_3D`."""
    outer = [list(o)[-2] for o in offsets]
    inner = [list(o)[-1] for o in offsets]
    res = _fused_ragged_cutoff_3D(values, outer, inner, keep_lengths, drop_sides, pad_sides,
                                  weights)
    pairs = [[o, i] for o, i in zip(res[1], res[2])]
    if weights is not None:
        return res[0], pairs, res[3]
    return res[0], pairs


def feature_cross_ragged(x_val: torch.Tensor, x_offsets, y_val: torch.Tensor, y_offsets,
                         x_weight: Optional[torch.Tensor] = None,
                         y_weight: Optional[torch.Tensor] = None):
    """Row-wise cross of two ragged int64 id tensors (last offsets level of each; one offsets
    dtype). Per row over ``min(rows)``: unique x ids x unique y ids (x-major, ascending),
    id = MurmurHash64A(int64_le(x) || int64_le(y)), weight ``w_x*w_y`` (missing = 1.0).
    Returns ``(int64 values, offsets (inputs' dtype) [rows+1], weight)``."""
    return _F.feature_cross(x_val, _last(x_offsets), y_val, _last(y_offsets), x_weight, y_weight)


def _per_row(x, n: int, device, dtype) -> torch.Tensor:
    t = torch.as_tensor(x, device=device)
    if t.dim() == 0 or t.numel() == 1:
        t = t.reshape(()).expand(n)
    return t.to(dtype)


def ragged_topk_index_cutoff(drop_num, pad_num, drop_side, pad_side, offset: torch.Tensor,
                             topk_index: torch.Tensor, indicator: torch.Tensor
                             ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Select top-k positions inside cut rows.

    Row r spans ``[offset[r], offset[r+1])``; it is first cut by ``drop_num[r]`` (from the left
    when ``drop_side``). The positions ``topk_index[indicator[r]]`` refer to the cut row (shifted
    by ``pad_num[r]`` when ``pad_side`` is left-padding); those that fall inside it are kept, in
    ``topk_index`` order. Returns ``(global value indices int64, new offsets)`` (offsets keep
    ``offset``'s dtype).
    """
    dev = offset.device
    off = offset.to(torch.int64)
    rows = off.numel() - 1
    drop = _per_row(drop_num, rows, dev, torch.int64)
    pad = _per_row(pad_num, rows, dev, torch.int64)
    dside = _per_row(drop_side, rows, dev, torch.bool)
    pside = _per_row(pad_side, rows, dev, torch.bool)
    lens = off[1:] - off[:-1]
    cut = (lens - drop).clamp(min=0)
    start = off[:-1] + torch.where(dside, lens - cut, torch.zeros_like(lens))
    idx = topk_index.to(dev, torch.int64)[indicator.to(dev, torch.int64)]  # [rows, K]
    local = idx - torch.where(pside, pad, torch.zeros_like(pad)).unsqueeze(1)
    keep = (local >= 0) & (local < cut.unsqueeze(1))
    glob = start.unsqueeze(1) + local
    values = glob[keep]
    new_off = torch.zeros(rows + 1, dtype=torch.int64, device=dev)
    new_off[1:] = torch.cumsum(keep.sum(1), 0)
    return values, new_off.to(offset.dtype)


def ragged_tile(batch: Sequence[int], seq: Sequence[int], indices: torch.Tensor,
                offset: torch.Tensor, table: torch.Tensor, check_enable: bool = False) -> torch.Tensor:
    """The gather behind the tile combiner, for several groups of bags at once.

    Group ``g`` has ``batch[g]`` bags and tile length ``seq[g]``; the bags of all groups are
    described by one ``offset`` ``[Σ batch + 1]`` over ``indices`` (int64 rows of ``table``
    ``[U, dim]``; ``-1`` -> zeros). Output ``[Σ batch[g]·seq[g], dim]``: row ``j`` of bag ``b`` is
    ``table[indices[offset[b] + j]]`` when ``j`` < the bag's length, else 0. Differentiable
    w.r.t. ``table`` (csrc ``tile_forward``/``tile_backward``).
    """
    from recis_compat.ops.tile import tile
    if len(batch) != len(seq):
        raise ValueError(f"ragged_tile: {len(batch)} batch sizes but {len(seq)} tile lengths")
    if check_enable:
        check_para(batch, seq, indices, offset, table)
    outs, start = [], 0
    for bs, tl in zip(batch, seq):
        off = offset[start:start + int(bs) + 1]
        outs.append(tile(table, indices, off, int(tl)).reshape(-1, table.shape[1]))
        start += int(bs)
    if not outs:
        return table.new_zeros((0, table.shape[1]))
    return torch.cat(outs, 0)


def check_para(batch, seq, indices, offset, table) -> None:
    """Validate :func:`ragged_tile` arguments; raises ValueError naming what is wrong."""
    if any(int(b) < 0 for b in batch) or any(int(s) <= 0 for s in seq):
        raise ValueError(f"ragged_tile: batch sizes must be >= 0 and tile lengths > 0, got "
                         f"batch={list(batch)}, seq={list(seq)}")
    if offset.dim() != 1 or offset.numel() != sum(int(b) for b in batch) + 1:
        raise ValueError(f"ragged_tile: offset must have sum(batch)+1 = {sum(int(b) for b in batch) + 1} "
                         f"entries, got shape {tuple(offset.shape)}")
    if indices.dtype != torch.int64 or table.dim() != 2:
        raise ValueError("ragged_tile: indices must be int64 and table 2-D [rows, dim]")


class RaggedTile(torch.autograd.Function):
    """Autograd Function form of :func:`ragged_tile` (gradient w.r.t. ``table`` only)."""

    @staticmethod
    def forward(ctx, batch, seq, indices, offset, table):
        ctx.save_for_backward(indices, offset)
        ctx.groups = [(int(b), int(s)) for b, s in zip(batch, seq)]
        ctx.rows = table.shape[0]
        with torch.no_grad():
            return ragged_tile(batch, seq, indices, offset, table)

    @staticmethod
    def backward(ctx, grad):
        indices, offset = ctx.saved_tensors
        total = grad.new_zeros((ctx.rows, grad.shape[1]))
        start = pos = 0
        for bs, tl in ctx.groups:
            g = grad[pos:pos + bs * tl].reshape(bs, tl, grad.shape[1]).contiguous()
            total += torch.ops.recis_compat.tile_backward(g, indices, offset[start:start + bs + 1], ctx.rows)
            start, pos = start + bs, pos + bs * tl
        return None, None, None, None, total
