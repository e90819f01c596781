"""List-in, list-out application of the ``recis.nn.functional`` kernels to feature inputs.

Each function takes the inputs of several features (already validated by their ops) and makes
**one** kernel call for all of them, then re-wraps every result in its input's structure.
Inputs are never modified. Used by the fused ops (``fused_op_impl``) and by the direct
``forward`` of the ops that have no separate non-fused form.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch

from recis_compat.features.values import DataValueProcessor
from recis_compat.ops import features as _kernels
from recis_compat.ops import hashing as _hashing
from recis_compat.ragged.tensor import RaggedPadInfo, RaggedTensor

__all__ = ["uint64_mod", "bucketize", "hash_strings", "cutoff_2d", "cutoff_3d", "multi_hash",
           "cross"]


def uint64_mod(inputs: Sequence, mods: Sequence[int]) -> list:
    """``uint64(ids) % mods[i]`` (int64) for every input; structure of each input kept."""
    procs = [DataValueProcessor(x) for x in inputs]
    outs = _kernels.fused_uint64_mod([p.get_input_value() for p in procs], [int(m) for m in mods])
    return [p.get_output_value(o) for p, o in zip(procs, outs)]


def bucketize(inputs: Sequence, boundaries: Sequence[torch.Tensor]) -> list:
    """int64 count of ``boundaries[i] <= value`` for every floating input; structure kept."""
    procs = [DataValueProcessor(x) for x in inputs]
    values = [p.get_input_value() for p in procs]
    bounds = [b.to(v.device) for b, v in zip(boundaries, values)]
    outs = _kernels.fused_bucketize(values, bounds)
    return [p.get_output_value(o) for p, o in zip(procs, outs)]


def hash_strings(inputs: Sequence[RaggedTensor], hash_type: str) -> List[RaggedTensor]:
    """One int64 hash per string; the strings are the last offsets level of each input.

    Input ``x``: int8/uint8 bytes with offsets ``[..., string offsets]``. Output: values int64
    ``[num_strings]``, offsets ``x.offsets()[:-1]``, dense shape ``x.dense_shape[:-1]``.
    """
    if not inputs:
        return []
    kind = "farm" if hash_type == "farm" else "murmur"
    outs = _hashing.fused_hash_bytes([x.values() for x in inputs], [x.offsets()[-1] for x in inputs],
                                     kind, [-1] * len(inputs))
    return [RaggedTensor(h, list(x.offsets()[:-1]), None, dense_shape=x.dense_shape[:-1])
            for x, h in zip(inputs, outs)]


def cutoff_2d(inputs: Sequence[RaggedTensor], seq_lens: Sequence[int],
              drop_left: Sequence[bool]) -> List[RaggedTensor]:
    """Cut every row (last offsets level) of input i to at most ``seq_lens[i]`` values.

    ``drop_left[i]`` keeps the **last** ``seq_lens[i]`` values. Weights are cut with the values.
    Output: ``RaggedTensor(values, [offsets [B+1]], weight, dense_shape=(B, seq_len))`` with a
    :class:`RaggedPadInfo` of int32 ``[B]`` drop/pad counts and bool ``[1]`` sides (pad side is
    always the right; values are never padded).
    """
    n = len(inputs)
    if n == 0:
        return []
    dev = inputs[0].device
    drop_t = torch.tensor([bool(d) for d in drop_left], dtype=torch.bool, device=dev)
    pad_t = torch.zeros(n, dtype=torch.bool, device=dev)
    vs, os_, ws, ds, ps = _kernels.fused_ragged_cutoff_2d(
        [x.values() for x in inputs], [x.offsets()[-1] for x in inputs],
        [x.weight() for x in inputs], [int(s) for s in seq_lens], [bool(d) for d in drop_left])
    out = []
    for i, (v, o, w) in enumerate(zip(vs, os_, ws)):
        rt = RaggedTensor(v, [o], w, dense_shape=(o.shape[0] - 1, int(seq_lens[i])))
        rt.set_pad_info(RaggedPadInfo(drop_nums=[ds[i]], pad_nums=[ps[i]],
                                      drop_sides=drop_t[i:i + 1], pad_sides=pad_t[i:i + 1]))
        out.append(rt)
    return out


def cutoff_3d(inputs: Sequence[RaggedTensor], seq_lens: Sequence[int],
              drop_left: Sequence[bool]) -> List[RaggedTensor]:
    """Give every row of input i exactly ``seq_lens[i]`` sub-lists (last two offsets levels).

    Rows with more are cut on the drop side (``drop_left[i]``: keep the last ones); rows with
    fewer get empty sub-lists on the right. Sub-lists are kept whole; weights follow the values.
    Output offsets ``[arange(0, (B+1)*seq_len, seq_len), inner]``, dense shape
    ``(B, seq_len, x.dense_shape[-1])``.
    """
    if not inputs:
        return []
    vs, outer, inner, ws = _kernels.fused_ragged_cutoff_3d(
        [x.values() for x in inputs], [x.offsets()[-2] for x in inputs],
        [x.offsets()[-1] for x in inputs], [x.weight() for x in inputs],
        [int(s) for s in seq_lens], [bool(d) for d in drop_left], [False] * len(inputs))
    return [RaggedTensor(v, [o, i], w, dense_shape=(o.shape[0] - 1, int(s), x.dense_shape[-1]))
            for x, v, o, i, w, s in zip(inputs, vs, outer, inner, ws, seq_lens)]


def multi_hash(inputs: Sequence, muls: Sequence[Sequence[int]], primes: Sequence[Sequence[int]],
               buckets: Sequence[Sequence[int]]) -> List[Dict[str, object]]:
    """IDMultiHash for several inputs in one call: ``{"multi_hash_j": ...}`` per input.

    Hash j of input i: ``(((x*muls[i][j]) % primes[i][j] + p) % p) % buckets[i][j]`` (int64, C
    semantics), in the input's structure (RaggedTensors share the input's offsets and weight).
    """
    procs = [DataValueProcessor(x) for x in inputs]
    flat = _kernels.fused_multi_hash([p.get_input_value() for p in procs], muls, primes, buckets)
    out, k = [], 0
    for p, b in zip(procs, buckets):
        out.append({f"multi_hash_{j}": p.get_output_value(flat[k + j]) for j in range(len(b))})
        k += len(b)
    return out


def cross(x: RaggedTensor, y: RaggedTensor) -> RaggedTensor:
    """Row-wise id cross (last offsets level of each); weight ``w_x * w_y`` (missing = 1.0).

    Output: ``RaggedTensor(int64 ids, [offsets [B+1]], weight, dense_shape)`` where the dense
    shape is ``x.dense_shape`` when ``x`` has one offsets level (as RecIS), else ``(B, -1)``.
    """
    vals, offs, w = _kernels.feature_cross(x.values(), x.offsets()[-1], y.values(),
                                           y.offsets()[-1], x.weight(), y.weight())
    shape = x.dense_shape if len(x.dense_shape) == 2 else (offs.shape[0] - 1, -1)
    return RaggedTensor(vals, [offs], w, dense_shape=shape)

