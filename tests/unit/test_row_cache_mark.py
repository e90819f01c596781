"""``row_cache_mark_`` (csrc/optim/rows_floor.cpp): the recency / change marks of a cached_ssd
access whose slots are already known, i.e. the optimizer's rows right after the lookup that
translated them (backend/row_cache.py)."""
import pytest
import torch

from recis_compat.backend import row_cache as row_cache_mod
from recis_compat.backend.dynamic_table import DynamicTable, DynamicTableConfig
from recis_compat.backend.row_store import StoreConfig
from recis_compat.ops.optim import row_cache_mark_, sparse_adam_rows_

from reference_kernels import row_cache_marks_ref  # tests/ops/reference_kernels.py


@pytest.mark.parametrize("threads", [1, 2])
def test_marks_match_index_fill_and_skip_uncached_slots(threads):
    g = torch.Generator().manual_seed(2)
    S = 30_000
    # duplicates, -1 (rows not cached), more slots than one parallel chunk
    slots = torch.cat([torch.randint(0, S, (50_000,), generator=g), torch.full((300,), -1)])
    slots = slots[torch.randperm(slots.numel(), generator=g)]
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for mark, write in [(True, False), (False, True), (True, True), (False, False)]:
            last = torch.randint(0, 5, (S,), generator=g, dtype=torch.int32)
            dirty = torch.rand(S, generator=g) < 0.3
            hit = slots[slots >= 0]
            exp_last, exp_dirty = row_cache_marks_ref(last, dirty, hit, 7, mark, write)
            row_cache_mark_(slots, last, dirty, 7, mark, write)
            assert torch.equal(last, exp_last) and torch.equal(dirty, exp_dirty)
    finally:
        torch.set_num_threads(prev)


def test_opcheck_and_bad_input_is_named():
    last, dirty = torch.zeros(3, dtype=torch.int32), torch.zeros(3, dtype=torch.bool)
    torch.library.opcheck(torch.ops.recis_compat.row_cache_mark_.default,
                          (torch.tensor([0, 2, -1, 2]), last, dirty, 4, True, True))
    with pytest.raises(RuntimeError, match=r"row_cache_mark_: slot 5 at position 1 is outside the cache's 3 slots"):
        row_cache_mark_(torch.tensor([0, 5]), last, dirty, 4, True, True)
    with pytest.raises(RuntimeError, match=r"row_cache_mark_: slots must be a 1-D int64 host tensor"):
        row_cache_mark_(torch.tensor([0], dtype=torch.int32), last, dirty, 4, True, True)
    with pytest.raises(RuntimeError, match=r"row_cache_mark_: dirty must be a contiguous 1-D bool host tensor as "
                                           r"long as last \(3\)"):
        row_cache_mark_(torch.tensor([0]), last, dirty[:2], 4, True, True)
    with pytest.raises(RuntimeError, match=r"row_cache_mark_: clock must be in \[1, 2\^31\), got 0"):
        row_cache_mark_(torch.tensor([0]), last, dirty, 0, True, True)
    with pytest.raises(RuntimeError, match="row_cache_mark_.*host"):
        row_cache_mark_(torch.tensor([0], device="meta"), last, dirty, 4, True, True)


def test_optimizer_rows_reusing_the_lookups_translation_are_written_back(tmp_path, monkeypatch):
    """A step's rows reuse the lookup's translation (no second translate) and are only marked
    changed by ``row_cache_mark_``: flushing to the files and reopening gives the updated rows,
    as an in-RAM twin holds them."""
    def table(store):
        gen = torch.Generator().manual_seed(5)
        t = DynamicTable(DynamicTableConfig(name="mark", embedding_dim=16, block_size=256, store=store,
                                            sample_rows=lambda k: torch.randn(k, 16, generator=gen))).impl
        t.add_slot("m", [16], torch.float32, 0.0)
        t.add_slot("v", [16], torch.float32, 0.0)
        return t

    marks = []
    orig = row_cache_mod.row_cache_mark_

    def recording(slots, last, dirty, clock, mark, write):
        marks.append((slots.numel(), mark, write))
        return orig(slots, last, dirty, clock, mark, write)

    monkeypatch.setattr(row_cache_mod, "row_cache_mark_", recording)
    ram, ssd = table(None), table(StoreConfig("cached_ssd", str(tmp_path), 4))
    g = torch.Generator().manual_seed(1)
    for step in range(1, 4):
        ids = torch.unique(torch.randint(0, 2000, (600,), generator=g))
        grad = torch.randn(ids.numel(), 16, generator=g)
        for t in (ram, ssd):
            rows = t.find_or_insert_rows(ids)
            t.gather(rows)
            t.accept_grad(rows, grad, unique=True)
            with t.lock:
                k, gr = t.grad_rows()
                sparse_adam_rows_(t.embedding, t.get_slot("m"), t.get_slot("v"), k, gr, lr=0.01, beta1=0.9,
                                  beta2=0.999, eps=1e-8, decay=1.0, beta1_power=0.9 ** step,
                                  beta2_power=0.999 ** step)
            t.clear_grad()
        assert (ids.numel(), False, True) in marks, marks   # the step's rows: marked changed, not translated
        marks.clear()
    cache = ssd.storage._cache
    assert bool(cache.dirty[:cache.used].any())
    cache.flush()                                  # writes exactly the rows marked changed
    assert not bool(cache.dirty.any())
    cache.relayout()                               # empty the cache: every row from the files
    assert cache.used == 0
    for name in ("embedding", "m", "v"):
        all_ids = torch.arange(0, 2000)
        rr, rs = ram.find_rows(all_ids), ssd.find_rows(all_ids)
        keep = rr >= 0
        assert torch.equal(ram.read_slot(name, rr[keep]), ssd.read_slot(name, rs[keep])), name
