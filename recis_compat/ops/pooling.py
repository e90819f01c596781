"""Sum pooling of looked-up rows with our backward (``pooled_sum``).

``pooled_sum(emb [U, D], index [N] int64 (-1 = missing -> contributes zero), offsets [B+1],
weight [N] or None) -> [B, D]``: ``out[b] = Σ_{k in bag b} w_k · emb[index[k]]``.

Forward runs ``torch.nn.functional.embedding_bag`` (ATen's multithreaded CPU kernel). Backward
w.r.t. ``emb`` runs the csrc ``pooled_sum_backward`` op: ATen's embedding_bag backward sorts all
N indices; ours scatter-adds with per-thread row ownership (each thread owns a contiguous range
of the deduplicated rows and scans every position), deterministic: every row is summed in
position order. Measured ~2x faster than ATen on the 26-feature lookup benchmark. The gradient w.r.t. ``weight`` (when it requires grad) is
``<grad[bag(k)], emb[index[k]]>``.

The forward is the op ``recis_compat::pooled_sum`` (defined here with ``torch.library.custom_op``:
it only calls ATen) with a fake implementation and its backward registered through
``torch.library.register_autograd``, the one autograd style of every op in ``recis_compat/ops``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


@torch.library.register_fake("recis_compat::pooled_sum_backward")
def _pooled_sum_backward_fake(grad, index, offsets, weight, num_rows):
    return grad.new_empty((num_rows, grad.shape[1]))


def _bags_of(offsets: torch.Tensor, n: int) -> torch.Tensor:
    lengths = offsets[1:] - offsets[:-1]
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=offsets.device), lengths,
                                   output_size=n)


@torch.library.custom_op("recis_compat::pooled_sum", mutates_args=())
def _pooled_sum_op(emb: torch.Tensor, index: torch.Tensor, offsets: torch.Tensor,
                   weight: Optional[torch.Tensor]) -> torch.Tensor:
    off = offsets.to(torch.int64)
    if emb.shape[0] == 0 or index.numel() == 0:
        return emb.new_zeros((off.numel() - 1, emb.shape[1]))
    missing = index < 0
    w, idx = weight, index
    if bool(missing.any()):
        keep = (~missing).to(emb.dtype)
        w = keep if w is None else w * keep
        idx = index.clamp(min=0)
    return F.embedding_bag(idx, emb, off, mode="sum", per_sample_weights=w,
                           include_last_offset=True)


@_pooled_sum_op.register_fake
def _pooled_sum_fake(emb, index, offsets, weight):
    return emb.new_empty((offsets.shape[0] - 1, emb.shape[1]))


def _setup_context(ctx, inputs, output):
    emb, index, offsets, weight = inputs
    weight_grad = weight is not None and weight.requires_grad
    # emb is kept only for the gradient of the weight
    ctx.save_for_backward(emb if weight_grad else None, index, offsets, weight)
    ctx.num_rows = emb.shape[0]


def _backward(ctx, grad):
    emb, index, offsets, weight = ctx.saved_tensors
    off = offsets.to(torch.int64)
    grad = grad.contiguous()
    g_emb = g_w = None
    if ctx.needs_input_grad[0]:
        w = weight.detach().to(grad.dtype) if weight is not None else None
        g_emb = torch.ops.recis_compat.pooled_sum_backward(grad, index, off, w, ctx.num_rows)
    if weight is not None and ctx.needs_input_grad[3]:
        bags = _bags_of(off, index.numel())
        rows = emb.index_select(0, index.clamp(min=0))
        g_w = (grad.index_select(0, bags) * rows).sum(1) * (index >= 0).to(grad.dtype)
    return g_emb, None, None, g_w


torch.library.register_autograd("recis_compat::pooled_sum", _backward,
                                setup_context=_setup_context)


def pooled_sum(emb: torch.Tensor, index: torch.Tensor, offsets: torch.Tensor,
               weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """See the module docstring: emb ``[U, D]``, index int64 ``[N]``, offsets int32/int64
    ``[B+1]``, weight ``[N]`` (cast to emb's dtype) or None -> ``[B, D]`` in emb's dtype."""
    if weight is not None and weight.dtype != emb.dtype:
        weight = weight.to(emb.dtype)
    return torch.ops.recis_compat.pooled_sum(emb, index, offsets, weight)


# ----------------------------------------------------------------------------- gather_rows
@torch.library.custom_op("recis_compat::gather_rows", mutates_args=())
def _gather_rows_op(emb: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return emb.index_select(0, index)


@_gather_rows_op.register_fake
def _gather_rows_fake(emb, index):
    return emb.new_empty((index.shape[0], emb.shape[1]))


def _gather_rows_setup(ctx, inputs, output):
    emb, index = inputs
    ctx.save_for_backward(index)
    ctx.num_rows = emb.shape[0]


def sum_rows_by_index(grad: torch.Tensor, index: torch.Tensor, num_rows: int) -> torch.Tensor:
    """The gradient of ``emb[index]`` w.r.t. ``emb``: grad ``[N, D]``, index int64 ``[N]``
    (``0 <= index < num_rows``) -> ``[num_rows, D]``, row ``r`` the sum of ``grad[i]`` over
    ``index[i] == r`` (csrc ``pooled_sum_backward`` with every position its own bag)."""
    unit_bags = torch.arange(index.numel() + 1, device=index.device)
    return torch.ops.recis_compat.pooled_sum_backward(grad.contiguous(), index, unit_bags, None, num_rows)


def _gather_rows_backward(ctx, grad):
    (index,) = ctx.saved_tensors
    return sum_rows_by_index(grad, index, ctx.num_rows), None


torch.library.register_autograd("recis_compat::gather_rows", _gather_rows_backward, setup_context=_gather_rows_setup)


def gather_rows(emb: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``emb[index]``: emb ``[U, D]``, index int64 ``[N]`` (``0 <= index < U``) -> ``[N, D]``.

    ``index_select`` forward; the backward sums the gradients of repeated rows with the csrc
    ``pooled_sum_backward`` (every position its own bag) instead of ATen's ``index_add_``, which
    measured 3-6x slower single-threaded for 54k positions over 30k rows (the owner-side
    expansion of a sharded lookup, ``backend/sharding.py``)."""
    return torch.ops.recis_compat.gather_rows(emb, index)
