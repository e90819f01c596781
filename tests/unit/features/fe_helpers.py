"""Shared builders for the feature tests (imported as a plain module)."""
import torch

from recis_compat.ragged.tensor import RaggedTensor


def ragged(rows, dtype=torch.int64, offsets_dtype=torch.int32, weight=None):
    """RaggedTensor from a list of rows (lists of numbers)."""
    values = torch.tensor([v for r in rows for v in r], dtype=dtype)
    lens = torch.tensor([len(r) for r in rows], dtype=torch.int64)
    off = torch.zeros(len(rows) + 1, dtype=torch.int64)
    off[1:] = torch.cumsum(lens, 0)
    w = None if weight is None else torch.tensor(weight, dtype=torch.float32)
    return RaggedTensor(values, off.to(offsets_dtype), weight=w)


def random_ragged(batch, max_len, dtype=torch.int64, offsets_dtype=torch.int32, weight=False,
                  seed=0, low=0, high=10**6):
    """Random RaggedTensor with row lengths in [0, max_len]."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(0, max_len + 1, (batch,), generator=g)
    off = torch.zeros(batch + 1, dtype=torch.int64)
    off[1:] = torch.cumsum(lens, 0)
    n = int(off[-1])
    if dtype.is_floating_point:
        values = (torch.rand(n, generator=g) * (high - low) + low).to(dtype)
    else:
        values = torch.randint(low, high, (n,), generator=g, dtype=torch.int64).to(dtype)
    w = torch.rand(n, generator=g) if weight else None
    return RaggedTensor(values, off.to(offsets_dtype), weight=w)


def strings_ragged(rows, offsets_dtype=torch.int32):
    """Byte-level RaggedTensor (int8 values; offsets [rows, strings]) from lists of bytes."""
    flat = [s for r in rows for s in r]
    data = b"".join(flat)
    values = torch.tensor(list(data), dtype=torch.uint8).view(torch.int8)
    row_off = torch.zeros(len(rows) + 1, dtype=torch.int64)
    row_off[1:] = torch.cumsum(torch.tensor([len(r) for r in rows]), 0)
    str_off = torch.zeros(len(flat) + 1, dtype=torch.int64)
    if flat:
        str_off[1:] = torch.cumsum(torch.tensor([len(s) for s in flat]), 0)
    return RaggedTensor(values, [row_off.to(offsets_dtype), str_off.to(offsets_dtype)])


def rows_of(rt):
    """List of rows (Python lists) of a RaggedTensor's last offsets level."""
    off = rt.offsets()[-1].tolist()
    vals = rt.values().tolist()
    return [vals[off[i]:off[i + 1]] for i in range(len(off) - 1)]


def snapshot(rt):
    """Copies of a RaggedTensor's tensors, to prove it was not modified."""
    return (rt.values().clone(), [o.clone() for o in rt.offsets()],
            None if rt.weight() is None else rt.weight().clone(), rt._dense_shape)


def assert_unchanged(rt, snap):
    values, offsets, weight, shape = snap
    assert torch.equal(rt.values(), values)
    assert all(torch.equal(a, b) for a, b in zip(rt.offsets(), offsets))
    assert (weight is None) == (rt.weight() is None)
    if weight is not None:
        assert torch.equal(rt.weight(), weight)
    assert rt._dense_shape == shape
