"""A dynamic table with SparseAdam-style moment slots and the steps that drive a cached_ssd table
next to its in-RAM twin (tests/unit/test_row_cache.py, test_row_cache_memory.py)."""
from __future__ import annotations

import torch

from recis_compat.backend.dynamic_table import DynamicTable, DynamicTableConfig
from recis_compat.ops.optim import sparse_adam_rows_


def twin_table(name, store, dim, block_size=256):
    """A table with two moment slots; its initial rows are the same random rows for every table
    built with the same growth steps (a generator of its own, seed 5)."""
    gen = torch.Generator().manual_seed(5)
    t = DynamicTable(DynamicTableConfig(name=name, embedding_dim=dim, block_size=block_size, store=store,
                                        sample_rows=lambda k: torch.randn(k, dim, generator=gen))).impl
    t.add_slot("exp_avg", [dim], torch.float32, 0.0)
    t.add_slot("exp_avg_sq", [dim], torch.float32, 0.0)
    return t


def adam_step(t, ids, grad, step):
    """Lookup ``ids`` (inserting new ones), accept ``grad`` and run one SparseAdam kernel step;
    returns the looked-up rows."""
    rows = t.find_or_insert_rows(ids)
    emb = t.gather(rows)
    t.accept_grad(rows, grad, unique=True)
    with t.lock:
        k, g = t.grad_rows()
        sparse_adam_rows_(t.embedding, t.get_slot("exp_avg"), t.get_slot("exp_avg_sq"), k, g, lr=0.01,
                          beta1=0.9, beta2=0.999, eps=1e-8, decay=0.999, beta1_power=0.9 ** step,
                          beta2_power=0.999 ** step)
    t.clear_grad()
    return emb


def assert_same(a, b):
    """Every slot of tables ``a`` and ``b`` equal bit for bit (their state dicts)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"slot {k} differs"
