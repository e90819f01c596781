"""``recis.nn.functional.embedding_ops``: segment reductions, id partitioning and encoding (§1.5).

Pooling (``sum``/``mean``) runs ``ops.pooling.pooled_sum``: ``torch.nn.functional.embedding_bag``
forward (multithreaded on CPU) over the unique rows and our csrc ``pooled_sum_backward`` (a
counting-sort reduction per row, faster than embedding_bag's sort-based backward); ids that were
not found (index -1) contribute zero vectors (and count in a plain mean). The tile combiner runs
on our csrc ``tile_forward``/``tile_backward`` ops.

Fixes (COMPATIBILITY.md): weighted ``mean`` is always Σ w·e / Σ w (RecIS switches between that
and Σ w·e / n depending on the average bag size, Q7); ``merge_offsets`` works with one argument
(Q21).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from recis_compat.backend.slices import SLICE_SIZE, owner_ranks, slice_boundaries
from recis_compat.nn.functional.fused_ops import fused_ids_encode_gpu
from recis_compat.nn.functional.ragged_ops import ragged_tile
from recis_compat.ops.pooling import pooled_sum

COMBINERS = ("sum", "mean", "tile")


def _bag_weight_sums(weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Σ w per bag: float ``[B]`` (offsets int64 ``[B+1]``)."""
    csum = torch.zeros(weight.numel() + 1, dtype=weight.dtype, device=weight.device)
    csum[1:] = torch.cumsum(weight, 0)
    return csum[offsets[1:]] - csum[offsets[:-1]]


def ragged_embedding_segment_reduce(unique_emb: torch.Tensor, weight: Optional[torch.Tensor],
                                    reverse_indices: torch.Tensor, offsets: torch.Tensor,
                                    combiner: str, combiner_kwargs: Optional[dict] = None) -> torch.Tensor:
    """Reduce looked-up embeddings per bag.

    Args:
        unique_emb: float ``[U, D]``, the unique rows.
        weight: float ``[N]`` per-id weights, or None (= 1).
        reverse_indices: int64 ``[N]``: row of ``unique_emb`` for each id (``-1``: zeros).
        offsets: int32/int64 ``[B+1]`` bag boundaries over the N ids.
        combiner: ``"sum"`` (Σ w·e), ``"mean"`` (Σ w·e / Σ w; the plain mean without weights)
            or ``"tile"`` (``combiner_kwargs={"bs": [...], "tile_len": [...]}``; weights ignored).
    Returns:
        ``[B, D]`` for sum/mean (an empty bag gives zeros); ``[Σ bs·tile_len, D]`` for tile.
    """
    if combiner not in COMBINERS:
        raise ValueError(f"combiner must be one of {COMBINERS}, got {combiner!r}")
    off = offsets.to(torch.int64)
    if combiner == "tile":
        kw = combiner_kwargs or {}
        if "tile_len" not in kw:
            raise RuntimeError("combiner 'tile' requires combiner_kwargs with 'tile_len'")
        bs, tl = kw.get("bs", [off.numel() - 1]), kw["tile_len"]
        if isinstance(tl, int):
            tl = [tl] * len(bs)
        return ragged_tile(bs, tl, reverse_indices, off, unique_emb)
    if weight is None:
        if combiner == "mean":
            counts = (off[1:] - off[:-1]).clamp(min=1).to(unique_emb.dtype)
            w = torch.repeat_interleave(1.0 / counts, off[1:] - off[:-1], output_size=reverse_indices.numel())
            return pooled_sum(unique_emb, reverse_indices, off, w)
        return pooled_sum(unique_emb, reverse_indices, off, None)
    w = weight.to(unique_emb.dtype)
    if combiner == "mean":
        sums = _bag_weight_sums(w, off)
        denom = torch.where(sums == 0, torch.ones_like(sums), sums)
        w = w / torch.repeat_interleave(denom, off[1:] - off[:-1], output_size=w.numel())
    return pooled_sum(unique_emb, reverse_indices, off, w)


def segment_sum_sparse(data: torch.Tensor, weight: Optional[torch.Tensor], indices: torch.Tensor,
                       segment_ids: torch.Tensor, num_segments: int, backend: str = "recis") -> torch.Tensor:
    """``out[s] = Σ_{k: segment_ids[k]=s} weight[k]·data[indices[k]]`` -> ``[num_segments, D]``."""
    if backend not in ("recis", "torch"):
        raise ValueError(f"segment_sum_sparse: backend must be 'recis' or 'torch', got {backend!r}")
    rows = data.index_select(0, indices.to(torch.int64))
    if weight is not None:
        rows = rows * weight.to(rows.dtype).unsqueeze(1)
    out = rows.new_zeros((int(num_segments), data.shape[1]))
    return out.index_add(0, segment_ids.to(torch.int64), rows)


def weight_norm_sparse(data: torch.Tensor, weight: torch.Tensor, segment_ids: torch.Tensor,
                       num_segments: int, backend: str = "recis") -> torch.Tensor:
    """Per-id weights normalised within their segment: by the segment's weight sum
    (``backend="recis"``) or by its id count (``backend="torch"``), as in RecIS."""
    seg = segment_ids.to(torch.int64)
    if backend == "recis":
        sums = weight.new_zeros(int(num_segments)).index_add(0, seg, weight)
    elif backend == "torch":
        sums = torch.bincount(seg, minlength=int(num_segments)).to(weight.dtype)
    else:
        raise ValueError(f"weight_norm_sparse: backend must be 'recis' or 'torch', got {backend!r}")
    denom = sums[seg]
    return weight / torch.where(denom == 0, torch.ones_like(denom), denom)


def sparse_embedding_segment_reduce(unique_emb: torch.Tensor, weight: torch.Tensor,
                                    reverse_indices: torch.Tensor, segment_ids: torch.Tensor,
                                    num_segments: int, combiner: str) -> torch.Tensor:
    """Sum or weighted mean (Σ w·e / Σ w) of ``unique_emb[reverse_indices]`` per segment id."""
    if weight is None:
        raise ValueError("sparse_embedding_segment_reduce: weight must not be None")
    if combiner == "mean":
        weight = weight_norm_sparse(unique_emb, weight, segment_ids, num_segments, "recis")
    elif combiner != "sum":
        raise ValueError(f"sparse_embedding_segment_reduce: combiner must be 'sum' or 'mean', got {combiner!r}")
    return segment_sum_sparse(unique_emb, weight, reverse_indices, segment_ids, num_segments)


def merge_offsets(offsets: Sequence[torch.Tensor], max_sizes: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Concatenate offsets tensors, shifting each by the values before it:
    ``[0,2,5] + [0,3,6] -> [0,2,5,8,11]``. ``max_sizes`` (RecIS's second argument) gives each
    part's value count; by default it is the part's last offset."""
    if not offsets:
        raise ValueError("merge_offsets: need at least one offsets tensor")
    parts = [offsets[0].to(torch.int64)]
    shift = int(max_sizes[0]) if max_sizes is not None else int(offsets[0][-1])
    for i, o in enumerate(offsets[1:], start=1):
        o64 = o.to(torch.int64)
        parts.append(o64[1:] - o64[0] + shift)
        shift += int(max_sizes[i]) if max_sizes is not None else int(o64[-1] - o64[0])
    return torch.cat(parts).to(offsets[0].dtype)


def partition_boundaries(world_size: int) -> List[int]:
    """Slice boundaries of ``gen_slice``: rank r owns slices ``[b[r], b[r+1])`` of 65536."""
    return slice_boundaries(world_size)


def ids_partition(ids: torch.Tensor, max_partition_num: int = SLICE_SIZE,
                  world_size: int = 1) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dedupe ids and order them by owning rank (``id & 0xFFFF`` over contiguous slice ranges).

    Returns ``(unique_ids_sorted_by_slice [U], segment_sizes int64 [world_size],
    reverse_index int64 [N])`` with ``unique[reverse_index] == ids``. ``max_partition_num`` is
    ignored, as in RecIS.
    """
    if ids.dtype != torch.int64:
        raise TypeError(f"ids_partition: ids must be int64, got {ids.dtype}")
    uniq, inverse = torch.unique(ids, return_inverse=True)
    slices = uniq & 0xFFFF
    order = torch.argsort(slices, stable=True)
    sorted_ids = uniq[order]
    rank_of_order = torch.empty_like(order)
    rank_of_order[order] = torch.arange(order.numel(), device=order.device)
    owners = owner_ranks(sorted_ids, world_size)
    sizes = torch.bincount(owners, minlength=int(world_size))
    return sorted_ids, sizes, rank_of_order[inverse]


def ids_encode(ids_list: Sequence[torch.Tensor], table_ids) -> torch.Tensor:
    """Same as ``fused_ops.fused_ids_encode_gpu``: ``(id & (2^52-1)) | (table_id << 52)``, one tensor."""
    return fused_ids_encode_gpu(list(ids_list), table_ids)
