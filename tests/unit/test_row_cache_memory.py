"""The row cache's own memory (backend/row_cache.py, docs/stores.md "How the RAM budget works"):
its row index counts in the budget, grows with the table inside a reserve (no copy, only the
new rows written), and a cache that shrinks gives pages back without copying what it keeps --
while every row stays equal to an in-RAM twin's."""
from __future__ import annotations

import torch

from recis_compat.backend.row_store import StoreConfig

from row_cache_twins import adam_step, assert_same, twin_table

DIM = 8


def _table(name, store):
    return twin_table(name, store, DIM, block_size=4096)


_step, _same = adam_step, assert_same


def test_the_row_index_counts_in_the_budget_and_grows_without_copies(tmp_path):
    """A table growing to 200k rows under a 1 MiB budget: its row index (4 B per table row, 800
    KB at the end) leaves less and less of the budget to cached rows; the cache shrinks as the
    index grows, never holds more than the budget, grows its index inside one reserve and keeps
    every row equal to the in-RAM twin's."""
    ram, ssd = _table("idx", None), _table("idx", StoreConfig("cached_ssd", str(tmp_path), 1))
    cache = ssd.storage._cache
    budget = ssd.storage.store.budget()
    g = torch.Generator().manual_seed(0)
    index_ptrs, allocs = set(), []
    for step in range(1, 201):
        new = torch.arange((step - 1) * 1000, step * 1000)
        old = torch.randint(0, step * 1000, (400,), generator=g)
        ids = torch.unique(torch.cat([new, old]))
        grad = torch.randn(ids.numel(), DIM, generator=g)
        assert torch.equal(_step(ram, ids, grad, step), _step(ssd, ids, grad, step)), f"step {step}"
        assert ssd.storage.memory_bytes() <= budget.limit_bytes
        assert cache.memory_bytes() == cache.alloc * cache.slot_bytes + 4 * cache.rows
        index_ptrs.add(cache.row_slot.data_ptr())
        allocs.append(cache.alloc)
    assert budget.over_budget_bytes == 0
    assert cache.rows == ssd.storage.capacity >= 200_000
    assert cache.alloc == ((1 << 20) - 4 * cache.rows) // cache.slot_bytes     # what the index leaves
    assert max(allocs) > allocs[-1]                  # the cache gave slots back as the index grew
    assert len(index_ptrs) <= 3                      # the index moved at most twice (a small heap one, then a reserve)
    assert int((cache.row_slot >= 0).sum()) == int((cache.slot_row >= 0).sum())
    _same(ram, ssd)


def test_a_shrinking_cache_keeps_its_slabs_in_place(tmp_path):
    """Two tables share a budget: when the second grows, the first's share falls and it shrinks
    at its next access -- its slabs stay where they were (no copy of the rows it keeps) and its
    rows stay equal to the twin's; growing back reuses the same reserve."""
    store = StoreConfig("cached_ssd", str(tmp_path), 2)
    a_ram, a_ssd = _table("a", None), _table("a", store)
    b_ram, b_ssd = _table("b", None), _table("b", store)
    g = torch.Generator().manual_seed(1)
    ca = a_ssd.storage._cache
    for step in range(1, 31):
        ids = torch.unique(torch.randint(0, 40_000, (3000,), generator=g))
        grad = torch.randn(ids.numel(), DIM, generator=g)
        assert torch.equal(_step(a_ram, ids, grad, step), _step(a_ssd, ids, grad, step))
    full, ptr = ca.alloc, ca.slabs["embedding"].data_ptr()
    for step in range(1, 31):                        # b grows: a's share falls
        ids = torch.unique(torch.randint(0, 40_000, (3000,), generator=g))
        grad = torch.randn(ids.numel(), DIM, generator=g)
        assert torch.equal(_step(b_ram, ids, grad, step), _step(b_ssd, ids, grad, step))
    ids = torch.unique(torch.randint(0, 40_000, (3000,), generator=g))
    grad = torch.randn(ids.numel(), DIM, generator=g)
    assert torch.equal(_step(a_ram, ids, grad, 31), _step(a_ssd, ids, grad, 31))
    assert ca.alloc < full and ca.slabs["embedding"].data_ptr() == ptr
    assert store.budget().used_bytes() <= store.budget().limit_bytes
    b_ssd.close()                                    # a's share grows back: same reserve
    for step in range(32, 50):
        ids = torch.unique(torch.randint(0, 40_000, (3000,), generator=g))
        grad = torch.randn(ids.numel(), DIM, generator=g)
        assert torch.equal(_step(a_ram, ids, grad, step), _step(a_ssd, ids, grad, step))
    assert ca.alloc > full * 0.9 and ca.slabs["embedding"].data_ptr() == ptr
    _same(a_ram, a_ssd)
