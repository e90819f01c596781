"""The tile combiner: the first ``tile_len`` embeddings of each bag, zero padded.

``tile(emb, index, offsets, tile_len)``:
    emb: float ``[U, D]`` (typically the unique looked-up rows), index: int64 ``[N]`` row of
    ``emb`` for each id (``-1`` = not found -> zeros), offsets: int32/int64 ``[B+1]`` bags over
    ``index`` -> float ``[B, tile_len, D]``. Differentiable w.r.t. ``emb``: the gradient of a
    row is the sum over every position it fills (positions past ``tile_len`` get none).
Weights are ignored, as in RecIS.
"""
from __future__ import annotations

import torch


@torch.library.register_fake("recis_compat::tile_forward")
def _tile_forward_fake(emb, index, offsets, tile_len):
    return emb.new_empty((offsets.shape[0] - 1, tile_len, emb.shape[1]))


@torch.library.register_fake("recis_compat::tile_backward")
def _tile_backward_fake(grad, index, offsets, num_rows):
    return grad.new_empty((num_rows, grad.shape[2]))


def _setup_context(ctx, inputs, output):
    emb, index, offsets, tile_len = inputs
    ctx.save_for_backward(index, offsets)
    ctx.num_rows = emb.shape[0]


def _backward(ctx, grad):
    index, offsets = ctx.saved_tensors
    g = torch.ops.recis_compat.tile_backward(grad.contiguous(), index, offsets, ctx.num_rows)
    return g, None, None, None


torch.library.register_autograd("recis_compat::tile_forward", _backward, setup_context=_setup_context)


def tile(emb: torch.Tensor, index: torch.Tensor, offsets: torch.Tensor, tile_len: int) -> torch.Tensor:
    """See the module docstring. Raises ValueError for a non-positive ``tile_len``."""
    if int(tile_len) <= 0:
        raise ValueError(f"tile: tile_len must be > 0, got {tile_len}")
    return torch.ops.recis_compat.tile_forward(emb, index, offsets, int(tile_len))
