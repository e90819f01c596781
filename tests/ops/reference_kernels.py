"""Pure-PyTorch (and NumPy / dict) references of the csrc ops, written from the op contracts in
the docstrings of the ``recis_compat.ops`` modules: the feature-processing ops
(``ops.features``: vectorised torch, no per-row Python loops), ``pooled_sum`` (``ops.pooling``),
``coalesce_ids`` (``ops.coalesce``), ``counter_uniform`` (``ops.counter_init``: bit-exact),
``sparse_adam_rows_`` (``ops.optim``) and the id map (``ops.id_map``: dict-based, with the
kernels' row-assignment rules). The tests in ``tests/ops`` compare the kernels (CPU, and CUDA
where a device exists) against them; nothing in ``recis_compat`` calls them.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from recis_compat.ops.counter_init import as_int64
from recis_compat.ops.features import (_cross_weight_dtype, _signed, dense_shape,
                                       murmur64a_pair_torch, ragged_coordinates)


def uint64_mod_ref(x: torch.Tensor, mod: int) -> torch.Tensor:
    """``uint64(x) % mod`` without uint64 arithmetic: for x < 0 add ``2**64 % mod``."""
    if x.dtype != torch.int64:
        raise TypeError(f"uint64_mod: values must be int64, got {x.dtype}")
    if mod <= 0:
        raise ValueError(f"uint64_mod: mod must be > 0, got {mod}")
    r = torch.remainder(x, mod)  # in [0, mod)
    c = (1 << 64) % mod
    wrapped = torch.where(r >= mod - c, r - (mod - c), r + c)
    return torch.where(x < 0, wrapped, r)


def fused_uint64_mod_ref(values, mods) -> List[torch.Tensor]:
    return [uint64_mod_ref(v, int(m)) for v, m in zip(values, mods)]


def bucketize_ref(x: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    if not x.is_floating_point():
        raise TypeError(f"bucketize: values must be floating point, got {x.dtype}")
    b = boundaries.to(device=x.device, dtype=torch.float64)
    out = torch.bucketize(x.to(torch.float64), b, right=True)
    return torch.where(torch.isnan(x), torch.full_like(out, b.numel()), out)


def fused_bucketize_ref(values, boundaries) -> List[torch.Tensor]:
    return [bucketize_ref(v, b) for v, b in zip(values, boundaries)]


def multi_hash_one_ref(x: torch.Tensor, mul: int, prime: int, bucket: int) -> torch.Tensor:
    """``(((x*mul) % p + p) % p) % bucket`` with C int64 semantics (wrapping, truncating)."""
    if x.dtype != torch.int64:
        raise TypeError(f"multi_hash: inputs must be int64, got {x.dtype}")
    if prime <= 0 or bucket <= 0:
        raise ValueError(f"multi_hash: primes and buckets must be > 0, got {prime}, {bucket}")
    prod = x * _signed(mul)  # int64 multiply wraps
    h = torch.fmod(torch.fmod(prod, prime) + prime, prime)
    return torch.fmod(h, bucket)


def fused_multi_hash_ref(inputs, muls, primes, buckets, num_hashes) -> List[torch.Tensor]:
    out, j = [], 0
    for x, k in zip(inputs, num_hashes):
        if not 1 <= k <= 4:
            raise ValueError(f"multi_hash: 1 to 4 hashes per input, got {k}")
        for _ in range(k):
            out.append(multi_hash_one_ref(x, muls[j], primes[j], buckets[j]))
            j += 1
    return out


def _unique_rows(val: torch.Tensor, off: torch.Tensor, w: Optional[torch.Tensor], rows: int,
                 wdtype):
    """Per row (first ``rows``): sorted unique ids, their first weights, and counts."""
    off = off.to(torch.int64)[: rows + 1]
    start = off[0] if off.numel() else 0
    lens = off[1:] - off[:-1]
    n = int(lens.sum()) if rows else 0
    pos = torch.arange(n, device=val.device) + start
    row = torch.repeat_interleave(torch.arange(rows, device=val.device), lens)
    ids = val[pos]
    ww = (w[pos].to(wdtype) if w is not None else torch.ones(n, dtype=wdtype, device=val.device))
    order = torch.argsort(ids, stable=True)
    order = order[torch.argsort(row[order], stable=True)]
    ids, row, ww = ids[order], row[order], ww[order]
    first = torch.ones(n, dtype=torch.bool, device=val.device)
    if n > 1:
        first[1:] = (ids[1:] != ids[:-1]) | (row[1:] != row[:-1])
    ids, row, ww = ids[first], row[first], ww[first]
    counts = torch.bincount(row, minlength=rows) if rows else torch.zeros(0, dtype=torch.int64)
    return ids, ww, counts.to(torch.int64)


def feature_cross_ref(x_val, x_off, x_w, y_val, y_off, y_w):
    """Reference for ``feature_cross`` (vectorised torch)."""
    if x_val.dtype != torch.int64 or y_val.dtype != torch.int64:
        raise TypeError("feature_cross: ids must be int64")
    if x_off.dtype != y_off.dtype:
        raise TypeError("feature_cross: x and y offsets must share one dtype")
    rows = max(min(x_off.numel(), y_off.numel()) - 1, 0)
    wdt = _cross_weight_dtype(x_w, y_w)
    xi, xw, xc = _unique_rows(x_val, x_off, x_w, rows, wdt)
    yi, yw, yc = _unique_rows(y_val, y_off, y_w, rows, wdt)
    dev = x_val.device
    lens = xc * yc
    out_off = torch.zeros(rows + 1, dtype=torch.int64, device=dev)
    out_off[1:] = torch.cumsum(lens, 0)
    n = int(out_off[-1])
    row = torch.repeat_interleave(torch.arange(rows, device=dev), lens)
    local = torch.arange(n, device=dev) - out_off[:-1][row]
    xs = torch.cumsum(xc, 0) - xc
    ys = torch.cumsum(yc, 0) - yc
    xa = xs[row] + torch.div(local, yc[row], rounding_mode="floor")
    ya = ys[row] + torch.remainder(local, yc[row].clamp(min=1))
    vals = murmur64a_pair_torch(xi[xa], yi[ya])
    return vals, out_off.to(x_off.dtype), xw[xa] * yw[ya]


def _gather_ranges(starts: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """Concatenated ``arange(starts[k], starts[k]+lens[k])`` (int64)."""
    total = int(lens.sum()) if lens.numel() else 0
    if total == 0:
        return torch.zeros(0, dtype=torch.int64, device=starts.device)
    row = torch.repeat_interleave(torch.arange(lens.numel(), device=starts.device), lens)
    base = torch.cumsum(lens, 0) - lens
    return starts[row] + torch.arange(total, device=starts.device) - base[row]


def _cumsum0(lens: torch.Tensor, dtype) -> torch.Tensor:
    out = torch.zeros(lens.numel() + 1, dtype=torch.int64, device=lens.device)
    out[1:] = torch.cumsum(lens, 0)
    return out.to(dtype)


def fused_ragged_cutoff_2d_ref(values, offsets, weights, keep_lengths, drop_left):
    vs, os_, ws, ds, ps = [], [], [], [], []
    for v, o, w, keep, left in zip(values, offsets, weights, keep_lengths, drop_left):
        if keep <= 0:
            raise ValueError(f"ragged_cutoff_2d: keep length must be > 0, got {keep}")
        o64 = o.to(torch.int64)
        lens = o64[1:] - o64[:-1]
        kept = lens.clamp(max=keep)
        start = o64[:-1] + (lens - kept if left else 0)
        idx = _gather_ranges(start, kept)
        vs.append(v[idx])
        os_.append(_cumsum0(kept, o.dtype))
        ws.append(w[idx] if w is not None else v.new_empty((0,), dtype=torch.float32))
        ds.append((lens - keep).clamp(min=0).to(torch.int32))
        ps.append((keep - lens).clamp(min=0).to(torch.int32))
    return vs, os_, ws, ds, ps


def fused_ragged_cutoff_3d_ref(values, outer, inner, weights, keep_lengths, drop_left, pad_left):
    vs, outs, ins, ws = [], [], [], []
    for v, o, i, w, keep, dl, pl in zip(values, outer, inner, weights, keep_lengths, drop_left,
                                        pad_left):
        if keep <= 0:
            raise ValueError(f"ragged_cutoff_3d: keep length must be > 0, got {keep}")
        dev = v.device
        o64, i64 = o.to(torch.int64), i.to(torch.int64)
        b = o64.numel() - 1
        nsub = o64[1:] - o64[:-1]
        kept = nsub.clamp(max=keep)
        first = o64[:-1] + (nsub - kept if dl else 0)
        pad = keep - kept
        slot = torch.arange(keep, device=dev).expand(b, keep)
        local = slot - pad.unsqueeze(1) if pl else slot
        valid = (local >= 0) & (local < kept.unsqueeze(1))
        sub = (first.unsqueeze(1) + local).clamp(min=0)
        sub = torch.where(valid, sub, torch.zeros_like(sub)).reshape(-1)
        valid = valid.reshape(-1)
        sub_len = torch.where(valid, i64[(sub + 1).clamp(max=max(i64.numel() - 1, 0))] - i64[sub]
                              if i64.numel() > 1 else torch.zeros_like(sub),
                              torch.zeros_like(sub))
        idx = _gather_ranges(i64[sub] if i64.numel() else sub, sub_len)
        vs.append(v[idx])
        outs.append(torch.arange(0, (b + 1) * keep, keep, dtype=o.dtype, device=dev))
        ins.append(_cumsum0(sub_len, i.dtype))
        ws.append(w[idx] if w is not None else v.new_empty((0,), dtype=torch.float32))
    return vs, outs, ins, ws


def ragged_to_dense_ref(values: torch.Tensor, offsets: Sequence[torch.Tensor],
                        default_value: float = 0.0) -> torch.Tensor:
    """Reference: pad to dense ``[B, max_len_1, ..., *values.shape[1:]]`` (differentiable)."""
    offsets = [offsets] if isinstance(offsets, torch.Tensor) else list(offsets)
    shape = dense_shape(offsets)
    trailing = list(values.shape[1:])
    out = torch.full(shape + trailing, default_value, dtype=values.dtype, device=values.device)
    n = values.shape[0]
    if n == 0 or out.numel() == 0:
        return out + values.sum() * 0 if values.requires_grad and values.numel() else out
    coords = ragged_coordinates(n, offsets)
    return out.index_put(tuple(coords), values)


def dense_to_ragged_ref(dense: torch.Tensor, check_invalid: bool = True,
                        invalid_value=0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reference: 2-D ``[B, W]`` -> (values, int32 offsets ``[B+1]``)."""
    if dense.dim() != 2:
        raise ValueError(f"dense_to_ragged expects a 2-D tensor, got shape {tuple(dense.shape)}")
    b, w = dense.shape
    if check_invalid and w:
        valid = dense != invalid_value
        col = torch.arange(1, w + 1, device=dense.device).expand(b, w)
        lengths = torch.where(valid, col, torch.zeros_like(col)).amax(dim=1)
    elif check_invalid:
        lengths = torch.zeros(b, dtype=torch.int64, device=dense.device)
    else:
        lengths = torch.full((b,), w, dtype=torch.int64, device=dense.device)
    keep = torch.arange(w, device=dense.device).expand(b, w) < lengths.unsqueeze(1)
    values = dense[keep]
    offsets = torch.zeros(b + 1, dtype=torch.int32, device=dense.device)
    offsets[1:] = torch.cumsum(lengths, 0).to(torch.int32)
    return values, offsets


def pooled_sum_ref(emb, index, offsets, weight=None):
    """``pooled_sum`` in torch ops (differentiable through index_select / index_add):
    emb ``[U, D]``, index int64 ``[N]`` (-1 = missing), offsets ``[B+1]``, weight ``[N]`` or
    None -> ``[B, D]``."""
    off = offsets.to(torch.int64)
    lengths = off[1:] - off[:-1]
    bags = torch.repeat_interleave(torch.arange(lengths.numel(), device=off.device), lengths,
                                   output_size=index.numel())
    rows = emb.index_select(0, index.clamp(min=0)) * (index >= 0).to(emb.dtype).unsqueeze(1)
    if weight is not None:
        rows = rows * weight.to(emb.dtype).unsqueeze(1)
    return torch.zeros(off.numel() - 1, emb.shape[1], dtype=emb.dtype).index_add(0, bags, rows)


# ----------------------------------------------------------------------------- coalesce_ids
_ID_MASK = (1 << 52) - 1   # the low 52 id bits kept by coalesce_ids


def coalesce_ids_ref(values: Sequence[torch.Tensor], offsets: Sequence[torch.Tensor],
                     children: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch :func:`coalesce_ids`."""
    ids: List[torch.Tensor] = []
    offs: List[torch.Tensor] = []
    shift = 0
    for k, (v, o, c) in enumerate(zip(values, offsets, children)):
        ids.append((v & _ID_MASK) | as_int64(int(c) << 52))
        o = o.to(torch.int64)
        offs.append((o[1:] if k else o) + shift)
        shift += v.numel()
    return torch.cat(ids), torch.cat(offs)


# ----------------------------------------------------------------------------- counter_uniform (bit-exact)
def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _splitmix(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64 (increment + finalizer) on int64 bit patterns (wrapping arithmetic)."""
    x = x + as_int64(0x9E3779B97F4A7C15)
    x = (x ^ _shr(x, 30)) * as_int64(0xBF58476D1CE4E5B9)
    x = (x ^ _shr(x, 27)) * as_int64(0x94D049BB133111EB)
    return x ^ _shr(x, 31)


def counter_uniform_ref(ids: torch.Tensor, seed: int, width: int) -> torch.Tensor:
    """Pure-torch :func:`counter_uniform`."""
    key = _splitmix(_splitmix(ids.reshape(-1).to(torch.int64)) ^ as_int64(int(seed)))
    cols = torch.arange(width, dtype=torch.int64, device=ids.device) * as_int64(0xD1B54A32D192ED03)
    bits = _splitmix(key.unsqueeze(1) + cols.unsqueeze(0))
    return (_shr(bits, 11).to(torch.float64) + 0.5) * (1.0 / (1 << 53))


# ----------------------------------------------------------------------------- sparse_adam_rows_
def sparse_adam_rows_ref(param: np.ndarray, m: np.ndarray, v: np.ndarray, rows: np.ndarray,
                         grad: np.ndarray, *, lr, beta1, beta2, eps, decay, beta1_power,
                         beta2_power) -> None:
    """NumPy reference of §1.6.2, in place."""
    alpha = -lr * math.sqrt(1.0 - beta2_power) / (1.0 - beta1_power)
    for i, r in enumerate(rows):
        g = grad[i]
        param[r] *= decay
        m[r] = beta1 * m[r] + (1 - beta1) * g
        v[r] = beta2 * v[r] + (1 - beta2) * g * g
        param[r] += alpha * m[r] / (np.sqrt(v[r]) + eps)


# ----------------------------------------------------------------------------- id map
def unique_first_seen_ref(ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Dict-based :func:`unique_first_seen`."""
    order: Dict[int, int] = {}
    inverse = [order.setdefault(v, len(order)) for v in ids.reshape(-1).tolist()]
    return torch.tensor(list(order), dtype=torch.int64), torch.tensor(inverse, dtype=torch.int64)


def ids_partition_ref(ids: torch.Tensor, world_size: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Python reference of ``ids_partition``: first-seen dedupe, owner of each distinct id by the
    slice rule written out (65536 slices by ``id & 0xFFFF``, contiguous ranges, the first
    ``65536 % W`` ranks one slice more), a stable grouping by owner."""
    uniq, inverse = unique_first_seen_ref(ids)
    per, extra = divmod(65536, world_size)
    bounds = [0]
    for r in range(world_size):
        bounds.append(bounds[-1] + per + (1 if r < extra else 0))
    owner = [next(r for r in range(world_size) if bounds[r] <= (v & 0xFFFF) < bounds[r + 1]) for v in uniq.tolist()]
    order = sorted(range(len(owner)), key=lambda i: owner[i])      # sorted() is stable
    position = {old: new for new, old in enumerate(order)}
    counts = [owner.count(r) for r in range(world_size)]
    return (uniq[torch.tensor(order, dtype=torch.int64)] if order else uniq,
            torch.tensor([position[i] for i in inverse.tolist()], dtype=torch.int64),
            torch.tensor(counts, dtype=torch.int64))


# ----------------------------------------------------------------------------- reference
class IdMapRef:
    """Dict-based reference of the id map with the kernels' row-assignment rules."""

    def __init__(self) -> None:
        self.map: Dict[int, int] = {}
        self.free: List[int] = []     # stack, top = last
        self.next_row = 0

    def find(self, ids: Sequence[int]) -> List[int]:
        return [self.map.get(int(i), -1) for i in ids]

    def find_or_insert(self, ids: Sequence[int]) -> Tuple[List[int], List[bool]]:
        rows, new = [], []
        for i in map(int, ids):
            r = self.map.get(i)
            if r is None:
                r = self.free.pop() if self.free else self._fresh()
                self.map[i] = r
                new.append(True)
            else:
                new.append(False)
            rows.append(r)
        return rows, new

    def _fresh(self) -> int:
        self.next_row += 1
        return self.next_row - 1

    def delete(self, ids: Sequence[int]) -> List[int]:
        freed = []
        for i in map(int, ids):
            r = self.map.pop(i, None)
            if r is not None:
                freed.append(r)
                self.free.append(r)
        return freed

    def export(self) -> Tuple[List[int], List[int]]:
        pairs = sorted(self.map.items(), key=lambda kv: kv[1])
        return [k for k, _ in pairs], [v for _, v in pairs]

    def __len__(self) -> int:
        return len(self.map)


def find_or_insert_ref(ref: IdMapRef, ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Tensor face of :meth:`IdMapRef.find_or_insert` (mutates ``ref``)."""
    rows, new = ref.find_or_insert(ids.tolist())
    return torch.tensor(rows, dtype=torch.int64), torch.tensor(new, dtype=torch.bool)


def find_ref(ref: IdMapRef, ids: torch.Tensor) -> torch.Tensor:
    return torch.tensor(ref.find(ids.tolist()), dtype=torch.int64)


def delete_ref(ref: IdMapRef, ids: torch.Tensor) -> torch.Tensor:
    return torch.tensor(ref.delete(ids.tolist()), dtype=torch.int64)


_M64 = (1 << 64) - 1


# ----------------------------------------------------------------------------- string hashes
def _to_signed(h: int) -> int:
    return h - (1 << 64) if h >= (1 << 63) else h


def murmur64a_ref(data: bytes, seed: int = 0) -> int:
    """MurmurHash64A as an unsigned Python int (reference, slow)."""
    m, r = 0xC6A4A7935BD1E995, 47
    n = len(data)
    h = (seed ^ (n * m)) & _M64
    nwords = n // 8
    for i in range(nwords):
        k = int.from_bytes(data[8 * i:8 * i + 8], "little")
        k = (k * m) & _M64
        k ^= k >> r
        k = (k * m) & _M64
        h ^= k
        h = (h * m) & _M64
    tail = data[8 * nwords:]
    if tail:
        for i, b in enumerate(tail):
            h ^= b << (8 * i)
        h = (h * m) & _M64
    h ^= h >> r
    h = (h * m) & _M64
    h ^= h >> r
    return h


def bucket_ref(h: int, bucket: int) -> int:
    """Apply the reader's bucket rule to an unsigned hash (see module docstring)."""
    if bucket < 0:
        return _to_signed(h)
    if bucket == 0:
        return h & 0x7FFFFFFFFFFFFFFF
    return h % bucket


def hash_strings_ref(strings: Sequence[bytes], hash_type: str, bucket: int = -1) -> List[int]:
    """Reference for ``recis_compat.ops.hashing.hash_bytes``; farm uses ``pyfarmhash`` (a test-only oracle)."""
    assert hash_type in ("farm", "murmur"), hash_type
    if hash_type == "farm":
        import farmhash  # pyfarmhash, installed for tests
        return [bucket_ref(farmhash.fingerprint64(s), bucket) for s in strings]
    return [bucket_ref(murmur64a_ref(s), bucket) for s in strings]


# ----------------------------------------------------------------------------- tile
def tile_ref(emb: torch.Tensor, index: torch.Tensor, offsets: torch.Tensor, tile_len: int) -> torch.Tensor:
    """Pure-PyTorch reference (differentiable through index_select / masked scatter)."""
    off = offsets.to(torch.int64)
    b = off.numel() - 1
    lengths = (off[1:] - off[:-1]).clamp(max=tile_len)
    j = torch.arange(tile_len, device=emb.device)
    used = j.unsqueeze(0) < lengths.unsqueeze(1)                       # [B, T]
    pos = (off[:-1].unsqueeze(1) + j.unsqueeze(0))[used]                # positions into index
    rows = index[pos]
    found = rows >= 0
    vals = torch.zeros(rows.numel(), emb.shape[1], dtype=emb.dtype, device=emb.device)
    vals[found] = emb.index_select(0, rows[found])
    out = torch.zeros(b, tile_len, emb.shape[1], dtype=emb.dtype, device=emb.device)
    out = out.masked_scatter(used.unsqueeze(-1).expand_as(out), vals)
    return out


# ----------------------------------------------------------------------------- id map table layout
_M64 = (1 << 64) - 1


def id_map_mix64_ref(key: int) -> int:
    """splitmix64's finalizer on the key's 64-bit two's complement (csrc/embedding/id_map.h)."""
    x = key & _M64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _M64
    x ^= x >> 31
    return x


def id_map_home_slot_ref(key: int, capacity: int) -> int:
    """Home slot of ``key`` in a table of ``capacity`` slots: high word of mix64(key) * capacity."""
    return (id_map_mix64_ref(key) * capacity) >> 64


def id_map_legacy_state_ref(ref: "IdMapRef", capacity: int) -> Dict[str, torch.Tensor]:
    """The state dict an IdMap of the old layout held for ``ref``'s map: ``table`` int64
    ``[capacity, 2]`` = ``(key, state)`` (power-of-two capacity, home slot ``mix64(key) &
    (capacity - 1)``, linear probing), ``meta`` and the free stack. Freed rows leave tombstones
    in slots of their own."""
    assert capacity & (capacity - 1) == 0
    table = [[0, -1] for _ in range(capacity)]
    ids, rows = ref.export()
    for k, r in zip(ids, rows):
        j = id_map_mix64_ref(k) & (capacity - 1)
        while table[j][1] != -1:
            j = (j + 1) & (capacity - 1)
        table[j] = [k, r]
    tombs = 0
    for j in range(capacity):                   # a few tombstones, as deletes leave them
        if table[j][1] == -1 and tombs < len(ref.free):
            table[j] = [12345, -2]
            tombs += 1
    meta = [len(ref), ref.next_row, tombs, len(ref.free)]
    return {"table": torch.tensor(table, dtype=torch.int64), "meta": torch.tensor(meta, dtype=torch.int64),
            "free_rows": torch.tensor(list(ref.free), dtype=torch.int64)}


def sparse_rows_rotate_ref(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, rows: torch.Tensor):
    """``(a, b, c)`` after ``(a, b, c)[rows] <- (b, c, a)[rows]`` (new tensors)."""
    a2, b2, c2 = a.clone(), b.clone(), c.clone()
    a2[rows], b2[rows], c2[rows] = b[rows], c[rows], a[rows]
    return a2, b2, c2


def row_cache_marks_ref(last: torch.Tensor, dirty: torch.Tensor, hit: torch.Tensor, clock: int, mark: bool,
                        write: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """The row cache's marks after an access to cache slots ``hit`` (int64, repeats allowed):
    ``last[hit] = clock`` when ``mark``, ``dirty[hit] = True`` when ``write``; new tensors
    (``row_cache_translate_`` / ``row_cache_mark_``, csrc/optim/rows_floor.cpp)."""
    exp_last, exp_dirty = last.clone(), dirty.clone()
    if mark:
        exp_last.index_fill_(0, hit, clock)
    if write:
        exp_dirty.index_fill_(0, hit, True)
    return exp_last, exp_dirty
