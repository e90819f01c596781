"""RowStorage on the CPU: zeroed reserves (rows of a zero-initialised slot are not written at
growth) and the 1 GiB reserve of a growing slot (backend/row_storage.py module docstring)."""
import copy
import pickle

import pytest
import torch

import recis_compat.backend.anon_memory as anon_memory
import recis_compat.backend.row_storage as rs
from recis_compat.backend.row_storage import RowStorage


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _old_reserve(self, name, rows):
    """The reserve as allocated before zeroed reserves: uninitialised memory, every new row filled."""
    spec = self.specs[name]
    self._zero_tail.discard(name)
    return torch.empty([rows] + spec.tail, dtype=spec.dtype, device=self.device)


def test_growing_slot_reserves_a_gib_and_copies_at_most_once_more():
    """A slot of 32-byte rows grown in steps to 2M rows (64 MiB): once it passes 1 MiB its reserve
    is >= 1 GiB, so the rows are copied at most once after the first allocation (x8 reserves
    alone copied at 32K -> 262K -> 2M rows)."""
    st = RowStorage(8, torch.float32, "cpu", None, block=1024)
    st.add_slot("exp_avg", [8], torch.float32)
    marks = torch.tensor([0, 1000, 40000])
    for n in range(8192, 2_000_001, 65536):
        st.ensure_capacity(n)
        if n == 8192:
            st.write_rows("embedding", marks[:2], torch.full((2, 8), 3.0))
        if n > 40000 and st.embedding[40000, 0].item() == 0:
            st.write_rows("exp_avg", marks[2:], torch.full((1, 8), 4.0))
    assert st.num_reallocations <= 2, st.num_reallocations
    assert st.reserved_rows * 32 >= (1 << 30)
    assert st.embedding[marks[:2]].eq(3.0).all() and st.slot("exp_avg")[40000].eq(4.0).all()
    # every other row reads 0 (never written: the zeroed reserve, nothing filled)
    assert int(st.embedding.ne(0).any(1).sum()) == 2
    assert int(st.slot("exp_avg").ne(0).any(1).sum()) == 1
    # resident: the rows in use (populated for writing at growth), not the reserve
    assert st.memory_bytes() == st.capacity * 64


def test_small_slots_keep_x8_reserves():
    st = RowStorage(2, torch.float32, "cpu", None, block=10)
    st.ensure_capacity(1000)
    assert st.reserved_rows == 8 * 1000


def test_strict_overcommit_has_no_gib_reserve(monkeypatch):
    monkeypatch.setattr(rs, "_strict_overcommit", lambda: True)
    st = RowStorage(8, torch.float32, "cpu", None, block=1024)
    st.ensure_capacity(1 << 16)
    st.ensure_capacity((1 << 16) + 1)
    assert st.reserved_rows == int((1 << 16) * 1.5)


def test_new_rows_are_populated_at_growth():
    """Zero-initialised rows of a zeroed reserve are backed with memory when the capacity grows
    (not left to the first read, which maps the shared zero page and makes the first write
    fault again): RSS grows by the rows' bytes."""
    st = RowStorage(64, torch.float32, "cpu", None, block=1024)
    st.add_slot("exp_avg", [64], torch.float32)
    st.ensure_capacity(1024)
    before = _rss_bytes()
    st.ensure_capacity(1024 + (32 << 20) // 256)       # 32 MiB more per slot
    grown = _rss_bytes() - before
    assert grown >= 0.9 * (64 << 20), grown
    assert not st.embedding.any() and not st.slot("exp_avg").any()


@pytest.mark.parametrize("dim", [2, 64])
def test_rows_equal_those_of_filled_reserves(monkeypatch, dim):
    """Values through growth, writes, resets, an added slot, clear, pickle and deepcopy are those
    of the earlier uninitialised-and-filled reserves, for reserves below and above the mapped
    size (dim 2: < 1 MiB, dim 64: mapped)."""
    def run():
        g = torch.Generator().manual_seed(3)
        st = RowStorage(dim, torch.float32, "cpu", None, block=512)
        st.add_slot("m", [dim], torch.float32)
        st.add_slot("f", [1], torch.int64, init=7)
        out = []
        for step, n in enumerate([600, 5000, 20000, 20001, 70000]):
            st.ensure_capacity(n)
            rows = torch.randint(0, n, (64,), generator=g)
            st.write_rows("embedding", rows, torch.randn(64, dim, generator=g))
            st.write_rows("m", rows[:8], torch.randn(8, dim, generator=g))
            st.reset_rows(rows[:4], preserve=["f"])
            if step == 2:
                st.add_slot("late", [3], torch.float32)
                st.add_slot("late_one", [1], torch.float32, init=1.0)
            if step == 3:
                st = pickle.loads(pickle.dumps(st))
            if step == 4:
                st = copy.deepcopy(st)
            out.append({k: v.clone() for k, v in st.slots.items()})
        st.clear()
        st.ensure_capacity(700)
        out.append({k: v.clone() for k, v in st.slots.items()})
        return out

    new = run()
    monkeypatch.setattr(RowStorage, "_new_reserve", _old_reserve)
    monkeypatch.setattr(anon_memory, "GROWING_BYTES", 1 << 62)
    old = run()
    for a, b in zip(new, old):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k


def test_rows_are_zeros_where_madvise_refuses(monkeypatch):
    """Kernels before 5.14 refuse MADV_POPULATE_WRITE: the new rows are then written with zeros
    (a reserve whose tail was dirtied by hand shows the fallback writes them)."""
    st = RowStorage(64, torch.float32, "cpu", None, block=1024)
    st.ensure_capacity(1024)
    monkeypatch.setattr(anon_memory, "madvise", lambda addr, length, advice: -1)
    st._reserve["embedding"][1024:4096] = 5.0
    st.ensure_capacity(4096)
    assert not st.embedding.any()
