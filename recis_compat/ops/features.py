"""Feature-processing ops: the Python face of ``csrc/features/``.

Every op ``torch.ops.recis_compat.<name>`` has
  * a fake (meta) implementation registered here (data-dependent sizes use
    ``torch.library.get_ctx().new_dynamic_size()``),
  * autograd where it is differentiable (``ragged_to_dense`` w.r.t. floating values),
  * a thin typed wrapper below (what the rest of recis_compat calls). A wrapper always runs the
    kernel: a device without a kernel for the op is an error naming the op and the device
    (:func:`recis_compat.ops._library.require_kernel`), never a silent fallback.

The pure-PyTorch references the tests compare the kernels against live in
``tests/ops/reference_kernels.py``. Kept here, because they run at run time: the MurmurHash64A
pair hash in torch ops (:func:`murmur64a_pair_torch`, the plain-torch baseline of
``benchmarks/features_bench.py``) and the ragged coordinate helpers
(:func:`ragged_coordinates`, :func:`dense_shape`) used by ``recis_compat.ragged.dense``
and ``nn.functional.ragged_ops``.

Ops (shapes/dtypes):

``fused_uint64_mod(Tensor[] values, int[] mods) -> Tensor[]``
    int64 values of any shape, reinterpreted as uint64, ``% mods[i]`` (> 0) -> int64, same shape.
``fused_bucketize(Tensor[] values, Tensor[] boundaries) -> Tensor[]``
    floating values of any shape, sorted 1-D floating boundaries -> int64 count of boundaries
    ``<= value`` (``torch.bucketize(right=True)``); NaN -> ``len(boundaries)``.
``fused_multi_hash(Tensor[] inputs, int[] muls, int[] primes, int[] buckets, int[] num_hashes)``
    ``-> Tensor[]``: flat lists; input i uses the next ``num_hashes[i]`` (1..4) entries of
    muls/primes/buckets; output ``(((x*mul) % p + p) % p) % bucket`` in C int64 semantics.
``feature_cross(x_val, x_off, x_w?, y_val, y_off, y_w?) -> (values, offsets, weight)``
    int64 ids, 1-D offsets (one dtype); per row over ``min(rows_x, rows_y)``: unique x ids
    (ascending) x unique y ids (ascending), id = MurmurHash64A(int64_le(x) || int64_le(y)),
    weight ``w_x * w_y`` (first weight of a duplicate; missing = 1.0). weight dtype: float32,
    or the promoted dtype of the given weights.
``fused_ragged_cutoff_2d(Tensor[] values, Tensor[] offsets, Tensor?[] weights, int[] keep_lengths,``
    ``bool[] drop_left) -> (values[], offsets[], weights[], drop_nums[], pad_nums[])``: each row
    cut to ``min(len, keep)`` (the last ``keep`` when ``drop_left``); weights are cut with the
    values (an absent weight gives an empty float32 tensor in the output list);
    drop/pad nums are int32 ``[B]``.
``fused_ragged_cutoff_3d(values[], outer[], inner[], Tensor?[] weights, int[] keep_lengths,``
    ``bool[] drop_left, bool[] pad_left) -> (values[], outer[], inner[], weights[])``: every
    row gets exactly ``keep`` sub-lists (cut on the drop side, padded with empty sub-lists on the
    pad side); outer = ``arange(0, (B+1)*keep, keep)``.
``ragged_to_dense(Tensor values, Tensor[] offsets, Scalar default_value) -> Tensor``
    ``[B, maxlen_1, ..., *values.shape[1:]]``; differentiable w.r.t. floating values.
``ragged_to_dense_backward(Tensor grad, Tensor[] offsets, int num_values) -> Tensor``
``dense_to_ragged(Tensor data, bool check_invalid, Scalar invalid_value) -> (Tensor, Tensor)``
    2-D data -> (values, int32 offsets ``[B+1]``), trailing invalid values of each row removed.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from recis_compat.ops._library import require_kernel

_NS = "recis_compat"
_M64 = (1 << 64) - 1


def _device_of(*tensors) -> torch.device:
    return next((t.device for t in tensors if isinstance(t, torch.Tensor)), torch.device("cpu"))


def _op(name: str, *tensors):
    """``torch.ops.recis_compat.<name>`` after checking the build has a kernel for the device of
    ``tensors`` (first tensor's device; CPU when there is none)."""
    require_kernel(name, _device_of(*tensors))
    return getattr(torch.ops.recis_compat, name)


def _fake(name):
    def deco(fn):
        torch.library.register_fake(f"{_NS}::{name}")(fn)
        return fn
    return deco


def _dyn():
    return torch.library.get_ctx().new_dynamic_size()


# ============================================================================ fake impls
@_fake("fused_uint64_mod")
def _fused_uint64_mod_fake(values, mods):
    return [torch.empty_like(v) for v in values]


@_fake("fused_bucketize")
def _fused_bucketize_fake(values, boundaries):
    return [torch.empty_like(v, dtype=torch.int64) for v in values]


@_fake("fused_multi_hash")
def _fused_multi_hash_fake(inputs, muls, primes, buckets, num_hashes):
    out = []
    for x, k in zip(inputs, num_hashes):
        out.extend(torch.empty_like(x) for _ in range(k))
    return out


def _cross_weight_dtype(xw, yw):
    dt = torch.float32
    for w in (xw, yw):
        if w is not None:
            dt = torch.promote_types(dt, w.dtype)
    return dt


@_fake("feature_cross")
def _feature_cross_fake(x_val, x_off, x_w, y_val, y_off, y_w):
    n = _dyn()
    rows = min(x_off.shape[0], y_off.shape[0])
    return (x_val.new_empty((n,)), x_off.new_empty((rows,)),
            x_val.new_empty((n,), dtype=_cross_weight_dtype(x_w, y_w)))


@_fake("fused_ragged_cutoff_2d")
def _cutoff_2d_fake(values, offsets, weights, keep_lengths, drop_left):
    vs, os_, ws, ds, ps = [], [], [], [], []
    for v, o, w in zip(values, offsets, weights):
        n = _dyn()
        vs.append(v.new_empty((n,) + tuple(v.shape[1:])))
        os_.append(o.new_empty(o.shape))
        ws.append(w.new_empty((n,)) if w is not None else v.new_empty((0,), dtype=torch.float32))
        ds.append(o.new_empty((o.shape[0] - 1,), dtype=torch.int32))
        ps.append(o.new_empty((o.shape[0] - 1,), dtype=torch.int32))
    return vs, os_, ws, ds, ps


@_fake("fused_ragged_cutoff_3d")
def _cutoff_3d_fake(values, outer, inner, weights, keep_lengths, drop_left, pad_left):
    vs, outs, ins, ws = [], [], [], []
    for v, o, i, w, k in zip(values, outer, inner, weights, keep_lengths):
        n = _dyn()
        b = o.shape[0] - 1
        vs.append(v.new_empty((n,) + tuple(v.shape[1:])))
        outs.append(o.new_empty((o.shape[0],)))
        ins.append(i.new_empty((b * k + 1,)))
        ws.append(w.new_empty((n,)) if w is not None else v.new_empty((0,), dtype=torch.float32))
    return vs, outs, ins, ws


@_fake("ragged_to_dense")
def _ragged_to_dense_fake(values, offsets, default_value):
    shape = [offsets[0].shape[0] - 1] + [_dyn() for _ in offsets]
    return values.new_empty(shape + list(values.shape[1:]))


@_fake("ragged_to_dense_backward")
def _ragged_to_dense_backward_fake(grad, offsets, num_values):
    return grad.new_empty([num_values] + list(grad.shape[1 + len(offsets):]))


@_fake("dense_to_ragged")
def _dense_to_ragged_fake(data, check_invalid=True, invalid_value=0):
    n = _dyn()
    return data.new_empty((n,)), data.new_empty((data.shape[0] + 1,), dtype=torch.int32)


def _r2d_setup(ctx, inputs, output):
    values, offsets, _ = inputs
    ctx.offsets = offsets
    ctx.num_values = values.shape[0]


def _r2d_backward(ctx, grad):
    g = torch.ops.recis_compat.ragged_to_dense_backward(grad.contiguous(), ctx.offsets,
                                                        ctx.num_values)
    return g, [None] * len(ctx.offsets), None


# The schema gives default_value no default on purpose: torch 2.13 drops trailing arguments
# equal to their schema default before autograd sees them, which would change how many
# gradients backward must return.
torch.library.register_autograd(f"{_NS}::ragged_to_dense", _r2d_backward,
                                setup_context=_r2d_setup)


# ============================================================================ wrappers
def as_int_list(x) -> List[int]:
    """``x`` (int, sequence of ints, or tensor of any shape) as a flat list of Python ints (RecIS
    passes per-feature options as lists, tuples, scalars or tensors)."""
    if isinstance(x, torch.Tensor):
        return [int(v) for v in x.reshape(-1).tolist()]
    if isinstance(x, (int,)):
        return [int(x)]
    return [int(v) for v in x]


def as_bool_list(x, n: int, default: bool = False) -> List[bool]:
    """``x`` as ``n`` Python bools: None -> ``[default] * n``; a bool -> repeated ``n`` times; a
    sequence or tensor -> its values."""
    if x is None:
        return [default] * n
    if isinstance(x, torch.Tensor):
        return [bool(v) for v in x.reshape(-1).tolist()]
    if isinstance(x, bool):
        return [x] * n
    return [bool(v) for v in x]


def fused_uint64_mod(values: Sequence[torch.Tensor], mods) -> List[torch.Tensor]:
    """``uint64(values[i]) % mods[i]`` as int64 (same shape), one kernel call for all inputs."""
    values = list(values)
    mods = as_int_list(mods)
    if len(mods) == 1 and len(values) > 1:
        mods = mods * len(values)
    return _op("fused_uint64_mod", *values)(values, mods)


def fused_bucketize(values: Sequence[torch.Tensor],
                    boundaries: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """int64 number of ``boundaries[i] <= values[i]`` (same shape); NaN -> last bucket."""
    values = list(values)
    boundaries = [b if isinstance(b, torch.Tensor) else torch.tensor(b, dtype=torch.float32)
                  for b in boundaries]
    boundaries = [b.to(v.device) for b, v in zip(boundaries, values)]
    return _op("fused_bucketize", *values)(values, boundaries)


def fused_multi_hash(inputs: Sequence[torch.Tensor], muls, primes, buckets) -> List[torch.Tensor]:
    """Flat list: for each input, one int64 tensor (input's shape) per (mul, prime, bucket)."""
    inputs = list(inputs)
    muls = [as_int_list(m) for m in muls]
    primes = [as_int_list(p) for p in primes]
    buckets = [as_int_list(b) for b in buckets]
    if not (len(inputs) == len(muls) == len(primes) == len(buckets)):
        raise ValueError("fused_multi_hash: inputs, muls, primes and bucket_nums must have one "
                         f"entry per input (got {len(inputs)}, {len(muls)}, {len(primes)}, "
                         f"{len(buckets)})")
    num = [len(m) for m in muls]
    for i, (m, p, b) in enumerate(zip(muls, primes, buckets)):
        if not (len(m) == len(p) == len(b)):
            raise ValueError(f"fused_multi_hash: input {i} has {len(m)} muls, {len(p)} primes "
                             f"and {len(b)} buckets; they must be equal in number")
    flat = lambda ls: [v for l in ls for v in l]  # noqa: E731
    return _op("fused_multi_hash", *inputs)(inputs, flat(muls), flat(primes), flat(buckets), num)


def feature_cross(x_val: torch.Tensor, x_off: torch.Tensor, y_val: torch.Tensor,
                  y_off: torch.Tensor, x_weight: Optional[torch.Tensor] = None,
                  y_weight: Optional[torch.Tensor] = None
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row-wise id cross of two ragged int64 tensors -> (int64 ids, offsets, weight)."""
    return tuple(_op("feature_cross", x_val)(x_val, x_off, x_weight, y_val, y_off, y_weight))


def fused_ragged_cutoff_2d(values: Sequence[torch.Tensor], offsets: Sequence[torch.Tensor],
                           weights: Optional[Sequence[Optional[torch.Tensor]]], keep_lengths,
                           drop_left):
    """Cut every row of feature i to ``keep_lengths[i]``; returns
    (values, offsets, weights (None where absent), drop_nums int32, pad_nums int32) lists."""
    values, offsets = list(values), list(offsets)
    n = len(values)
    weights = list(weights) if weights is not None else [None] * n
    keep = as_int_list(keep_lengths)
    drop = as_bool_list(drop_left, n)
    vs, os_, ws, ds, ps = _op("fused_ragged_cutoff_2d", *values)(values, offsets, weights, keep,
                                                                 drop)
    ws = [None if w_in is None else w for w_in, w in zip(weights, ws)]
    return list(vs), list(os_), ws, list(ds), list(ps)


def fused_ragged_cutoff_3d(values, outer, inner, weights, keep_lengths, drop_left, pad_left):
    """Force every row of feature i to exactly ``keep_lengths[i]`` sub-lists; returns
    (values, outer, inner, weights (None where absent)) lists."""
    values, outer, inner = list(values), list(outer), list(inner)
    n = len(values)
    weights = list(weights) if weights is not None else [None] * n
    keep = as_int_list(keep_lengths)
    drop = as_bool_list(drop_left, n)
    pad = as_bool_list(pad_left, n)
    vs, os_, is_, ws = _op("fused_ragged_cutoff_3d", *values)(values, outer, inner, weights, keep,
                                                              drop, pad)
    ws = [None if w_in is None else w for w_in, w in zip(weights, ws)]
    return list(vs), list(os_), list(is_), ws


def ragged_to_dense(values: torch.Tensor, offsets: Sequence[torch.Tensor],
                    default_value: float = 0.0) -> torch.Tensor:
    """Dense ``[B, maxlen_1, ..., *values.shape[1:]]`` (values' dtype); differentiable."""
    offsets = [offsets] if isinstance(offsets, torch.Tensor) else list(offsets)
    if isinstance(default_value, torch.Tensor):
        default_value = default_value.item()
    return _op("ragged_to_dense", values)(values, offsets, default_value)


def dense_to_ragged(data: torch.Tensor, check_invalid: bool = True,
                    invalid_value=0) -> Tuple[torch.Tensor, torch.Tensor]:
    """2-D ``[B, W]`` -> (values, int32 offsets ``[B+1]``) without each row's trailing
    ``invalid_value`` entries (when ``check_invalid``)."""
    if isinstance(invalid_value, torch.Tensor):
        invalid_value = invalid_value.item()
    return tuple(_op("dense_to_ragged", data)(data, bool(check_invalid), invalid_value))


# ============================================================================ torch helpers
def _signed(v: int) -> int:
    v &= _M64
    return v - (1 << 64) if v >= (1 << 63) else v


def _lsr(h: torch.Tensor, r: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns."""
    return (h >> r) & ((1 << (64 - r)) - 1)


def murmur64a_pair_torch(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MurmurHash64A(seed 0) of int64_le(x) || int64_le(y), elementwise, as int64 (torch ops)."""
    m = _signed(0xC6A4A7935BD1E995)
    r = 47
    h = torch.full_like(x, _signed(16 * 0xC6A4A7935BD1E995))
    for k in (x, y):
        k = k * m
        k = k ^ _lsr(k, r)
        k = k * m
        h = (h ^ k) * m
    h = h ^ _lsr(h, r)
    h = h * m
    return h ^ _lsr(h, r)


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
    return torch.stack(coords)


def dense_shape(offsets: Sequence[torch.Tensor]) -> List[int]:
    """``[B, max_len_1, ...]``: rows of offsets[0], then the longest row of each level."""
    shape = [offsets[0].shape[0] - 1]
    for off in offsets:
        shape.append(int((off[1:] - off[:-1]).max().item()) if off.numel() > 1 else 0)
    return shape
