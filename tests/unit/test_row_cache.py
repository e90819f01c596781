"""The cached_ssd row cache (backend/row_cache.py) and its file ops (``rows_pread_`` /
``rows_pwrite``, csrc/optim/rows_floor.cpp).

A file-backed table under a budget far below its rows is driven next to an in-RAM twin through
growth, lookups, optimizer steps, listener writes, evictions (``delete``) and slot additions:
every row of every slot stays equal bit for bit while rows are evicted, written back and read
again. An access with more rows than the budget holds still gets them all (the cache grows past
the budget with a warning naming the table and the budget needed). Checkpoints taken while rows
are cached and changed restore exactly; tables of one budget share it; ``close`` frees it.
"""
from __future__ import annotations

import os
import warnings

import pytest
import torch

from recis_compat.backend.row_cache import META_BYTES
from recis_compat.backend.row_store import StoreConfig
from recis_compat.backend import row_cache as row_cache_mod
from recis_compat.ops.optim import row_cache_sweep_, row_cache_translate_, rows_move_, rows_pread_, rows_pwrite

from reference_kernels import row_cache_marks_ref  # tests/ops/reference_kernels.py
from row_cache_twins import adam_step, assert_same, twin_table

DIM = 64
SLOT_BYTES = DIM * 4 * 3 + META_BYTES  # embedding + two moments + the cache's bookkeeping per row


# ----------------------------------------------------------------------------- the ops
def _file(tmp_path, rows: int, tail, dtype, seed=0):
    """A slot file of ``rows`` random rows; returns (fd, the rows as a tensor)."""
    g = torch.Generator().manual_seed(seed)
    data = (torch.randn([rows] + tail, generator=g) * 100).to(dtype)
    path = tmp_path / f"slot_{seed}.rows"
    path.write_bytes(data.numpy().tobytes() if dtype != torch.bfloat16 else data.view(torch.int16).numpy().tobytes())
    return os.open(path, os.O_RDWR), data


@pytest.mark.parametrize("dtype,tail", [(torch.float32, [16]), (torch.int64, [1]), (torch.bfloat16, [3, 5])])
def test_pread_and_pwrite_match_a_pure_pytorch_reference(tmp_path, dtype, tail):
    fd, data = _file(tmp_path, 5000, tail, dtype)
    try:
        g = torch.Generator().manual_seed(1)
        # sorted distinct rows with runs (consecutive rows) and gaps, as the cache passes them
        rows = torch.unique(torch.cat([torch.randint(0, 5000, (700,), generator=g), torch.arange(100, 180)]))
        for threads in (1, 2):
            prev = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                out = torch.empty([rows.numel()] + tail, dtype=dtype)
                rows_pread_(fd, rows, out)
            finally:
                torch.set_num_threads(prev)
            assert torch.equal(out, data.index_select(0, rows))
        # unsorted rows read the same (each row is its own run)
        shuffled = rows[torch.randperm(rows.numel(), generator=g)]
        assert torch.equal(rows_pread_(fd, shuffled, torch.empty([rows.numel()] + tail, dtype=dtype)),
                           data.index_select(0, shuffled))
        new = (torch.randn([rows.numel()] + tail, generator=g) * 7).to(dtype)
        rows_pwrite(fd, rows, new)
        expect = data.clone()
        expect.index_copy_(0, rows, new)
        everything = torch.arange(5000)
        assert torch.equal(rows_pread_(fd, everything, torch.empty([5000] + tail, dtype=dtype)), expect)
    finally:
        os.close(fd)


@pytest.mark.parametrize("threads", [1, 2])
def test_rows_move_matches_index_copy_bit_for_bit(threads):
    """rows_move_ moves rows as bytes: into a column of wider records (strided dst rows), out of
    a slab, across dtypes of the same row bytes; the same as index_select + index_copy_."""
    g = torch.Generator().manual_seed(4)
    slab = torch.randn(5000, 16, generator=g)                        # 64-byte rows
    records = torch.randint(-2 ** 62, 2 ** 62, (9000, 24), generator=g)  # 192-byte records as int64
    expect = records.clone()
    dst_rows = torch.randperm(9000, generator=g)[:7000]
    src_rows = torch.randint(0, 5000, (7000,), generator=g)
    col = records.narrow(1, 8, 8)                                    # bytes [64, 128) of every record
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rows_move_(col, dst_rows, slab, src_rows)
    finally:
        torch.set_num_threads(prev)
    expect.narrow(1, 8, 8).index_copy_(0, dst_rows, slab.index_select(0, src_rows).view(torch.int64))
    assert torch.equal(records, expect)
    back = torch.empty(7000, 16)
    rows_move_(back, torch.arange(7000), col, dst_rows)               # and out of the column again
    assert torch.equal(back.view(torch.int32), slab.index_select(0, src_rows).view(torch.int32))


def test_rows_move_rejects_bad_rows_and_shapes():
    dst, src = torch.zeros(10, 4), torch.ones(6, 4)
    with pytest.raises(RuntimeError, match=r"rows_move_: dst row 10 at position 1 is outside \[0, 10\)"):
        rows_move_(dst, torch.tensor([0, 10]), src, torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match=r"rows_move_: src row -1 at position 0 is outside \[0, 6\)"):
        rows_move_(dst, torch.tensor([0]), src, torch.tensor([-1]))
    with pytest.raises(RuntimeError, match="rows_move_: dst and src rows must hold the same bytes, got 16"):
        rows_move_(dst, torch.tensor([0]), torch.ones(6, 3), torch.tensor([0]))
    with pytest.raises(RuntimeError, match="rows_move_: the rows of dst .* must be contiguous"):
        rows_move_(torch.zeros(4, 10).t(), torch.tensor([0]), torch.ones(2, 4), torch.tensor([0]))
    with pytest.raises(RuntimeError, match="rows_move_: dst_rows and src_rows must have the same length"):
        rows_move_(dst, torch.tensor([0, 1]), src, torch.tensor([0]))
    assert torch.equal(dst, torch.zeros(10, 4))                      # nothing moved on an error


def test_ops_pass_opcheck(tmp_path):
    fd, data = _file(tmp_path, 300, [8], torch.float32)
    try:
        rows = torch.tensor([3, 4, 5, 90, 200, 201], dtype=torch.int64)
        torch.library.opcheck(torch.ops.recis_compat.rows_pread_.default, (fd, rows, torch.empty(6, 8)))
        torch.library.opcheck(torch.ops.recis_compat.rows_pwrite.default, (fd, rows, torch.ones(6, 8)))
        torch.library.opcheck(torch.ops.recis_compat.rows_move_.default,
                              (torch.zeros(300, 8), rows, torch.randn(10, 8), torch.arange(6)))
    finally:
        os.close(fd)


def test_op_errors_name_the_problem(tmp_path):
    fd, _ = _file(tmp_path, 10, [4], torch.float32)
    try:
        with pytest.raises(RuntimeError, match=r"rows_pread_: reading row 12 .*the file ends before the row"):
            rows_pread_(fd, torch.tensor([1, 12]), torch.empty(2, 4))
        with pytest.raises(RuntimeError, match=r"rows_pread_: row -1 at position 0 is negative"):
            rows_pread_(fd, torch.tensor([-1]), torch.empty(1, 4))
        with pytest.raises(RuntimeError, match=r"out must be \[len\(rows\)=2, \.\.\.\]"):
            rows_pread_(fd, torch.tensor([1, 2]), torch.empty(3, 4))
        with pytest.raises(RuntimeError, match="rows_pwrite reads and writes files from host memory.*meta"):
            rows_pwrite(fd, torch.tensor([1]), torch.empty(1, 4, device="meta"))
    finally:
        os.close(fd)
    with pytest.raises(RuntimeError, match=r"rows_pwrite: writing row 0 .*Bad file descriptor"):
        rows_pwrite(fd, torch.tensor([0]), torch.ones(1, 4))


def _sweep_reference(last, hand, used, k, clock):
    """The clock sweep as a plain loop (row_cache_sweep_'s contract): victims and the state after."""
    last = last.clone()
    got, h = [], hand
    for _ in range(2 * used):
        if len(got) == k:
            break
        v = int(last[h])
        if v == 0:
            last[h] = clock
            got.append(h)
        elif v != clock:
            last[h] = 0
        h = (h + 1) % used
    return torch.tensor(got, dtype=torch.int64), last


@pytest.mark.parametrize("threads", [1, 2])
def test_cache_bookkeeping_ops_match_a_pure_pytorch_reference(threads):
    """row_cache_translate_ = index_select of the row index + index_fill_ of the recency and
    change marks of the cached rows; row_cache_sweep_ = the second-chance loop above."""
    g = torch.Generator().manual_seed(3)
    T, S = 50_000, 20_000
    row_slot = torch.full((T,), -1, dtype=torch.int32)
    cached = torch.randperm(T, generator=g)[:S]
    row_slot[cached] = torch.randperm(S, generator=g).to(torch.int32)
    # duplicates, misses, more rows than one parallel chunk
    rows = torch.cat([torch.randint(0, T, (40_000,), generator=g), cached[:100], cached[:100]])
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for mark, write in [(True, False), (False, True), (True, True), (False, False)]:
            last = torch.randint(0, 5, (S,), generator=g, dtype=torch.int32)
            dirty = torch.rand(S, generator=g) < 0.3
            exp_slots = row_slot.index_select(0, rows).long()
            hit = exp_slots[exp_slots >= 0]
            exp_last, exp_dirty = row_cache_marks_ref(last, dirty, hit, 9, mark, write)
            got = row_cache_translate_(row_slot, rows, last, dirty, 9, mark, write)
            assert got.dtype == torch.int64 and torch.equal(got, exp_slots)
            assert torch.equal(last, exp_last) and torch.equal(dirty, exp_dirty)
    finally:
        torch.set_num_threads(prev)
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        used = int(torch.randint(1, 3000, (1,), generator=g))
        last = torch.randint(0, 4, (used + 7,), generator=g, dtype=torch.int32)   # 3 = the running access
        hand = int(torch.randint(0, used, (1,), generator=g))
        for k in (0, 1, used // 3, used):
            exp_v, exp_last = _sweep_reference(last, hand, used, k, 3)
            got_last = last.clone()
            assert torch.equal(row_cache_sweep_(got_last, hand, used, k, 3), exp_v)
            assert torch.equal(got_last, exp_last)
    # work proportional to the victims: with cold slots at the hand, only those are passed
    last = torch.full((10_000,), 2, dtype=torch.int32)
    last[500:600] = 0
    v = row_cache_sweep_(last, 500, 10_000, 100, 3)
    assert torch.equal(v, torch.arange(500, 600)) and bool((last[:500] == 2).all()) and bool((last[600:] == 2).all())


def test_cache_bookkeeping_ops_pass_opcheck_and_name_bad_input():
    row_slot = torch.tensor([2, -1, 0, 1], dtype=torch.int32)
    last, dirty = torch.zeros(3, dtype=torch.int32), torch.zeros(3, dtype=torch.bool)
    rows = torch.tensor([0, 1, 3, 3])
    torch.library.opcheck(torch.ops.recis_compat.row_cache_translate_.default,
                          (row_slot, rows, last, dirty, 4, True, True))
    torch.library.opcheck(torch.ops.recis_compat.row_cache_sweep_.default, (torch.zeros(3, dtype=torch.int32), 1, 3, 2, 4),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    with pytest.raises(RuntimeError, match=r"row_cache_translate_: row 7 at position 1 is outside the cache's index \[0, 4\)"):
        row_cache_translate_(row_slot, torch.tensor([0, 7]), last, dirty, 4, True, False)
    with pytest.raises(RuntimeError, match=r"row_cache_translate_: row 0 maps to cache slot 2 of 2 \(a corrupt index\)"):
        row_cache_translate_(row_slot, torch.tensor([0]), last[:2], dirty[:2], 4, True, False)
    with pytest.raises(RuntimeError, match=r"row_cache_translate_: last must be a contiguous 1-D int32 host tensor"):
        row_cache_translate_(row_slot, rows, last.long(), dirty, 4, True, False)
    with pytest.raises(RuntimeError, match=r"row_cache_translate_: dirty must be a contiguous 1-D bool host tensor as "
                                           r"long as last \(3\)"):
        row_cache_translate_(row_slot, rows, last, dirty[:2], 4, True, False)
    with pytest.raises(RuntimeError, match=r"row_cache_translate_: clock must be in \[1, 2\^31\), got 0"):
        row_cache_translate_(row_slot, rows, last, dirty, 0, True, False)
    with pytest.raises(RuntimeError, match=r"row_cache_sweep_: hand must be in \[0, used=3\), got 3"):
        row_cache_sweep_(last, 3, 3, 1, 4)
    with pytest.raises(RuntimeError, match=r"row_cache_sweep_: used must be in \[0, 3\], got 4"):
        row_cache_sweep_(last, 0, 4, 1, 4)
    with pytest.raises(RuntimeError, match="row_cache_sweep_ reads and writes files from host memory|"
                                           "row_cache_sweep_.*host"):
        row_cache_sweep_(torch.zeros(3, dtype=torch.int32, device="meta"), 0, 3, 1, 4)


# ----------------------------------------------------------------------------- a table and its twin
def _table(name, store, dim=DIM):
    return twin_table(name, store, dim)


def _pair(tmp_path, budget_mb=1, name="twin", store=None):
    """(in-RAM table, cached_ssd twin under ``budget_mb``)."""
    return _table(name, None), _table(name, store or StoreConfig("cached_ssd", str(tmp_path), budget_mb))


_step, _same = adam_step, assert_same


def test_write_back_keeps_every_row_equal_to_an_in_ram_twin(tmp_path):
    """60 steps of growth (to ~12k rows, 6x what the 1 MiB budget holds), lookups, Adam steps,
    listener stamps, evictions and a slot added mid-run: every row equal to the in-RAM twin's."""
    ram, ssd = _pair(tmp_path)
    budget = ssd.storage.store.budget()
    g = torch.Generator().manual_seed(0)
    for step in range(1, 61):
        hi = min(14_000, 2_000 + 300 * step)
        ids = torch.unique(torch.randint(0, hi, (1200,), generator=g))
        grad = torch.randn(ids.numel(), DIM, generator=g)
        e_ram, e_ssd = _step(ram, ids, grad, step), _step(ssd, ids, grad, step)
        assert torch.equal(e_ram, e_ssd), f"step {step}: lookups differ"
        if step == 20:
            for t in (ram, ssd):
                t.add_slot("stamp", [1], torch.int64, 0)     # changed cached rows go back first
        if step >= 20:
            for t in (ram, ssd):
                t.fill_slot("stamp", t.find_rows(ids), step)
        if step % 10 == 5:
            gone = torch.randint(0, hi, (500,), generator=g)
            assert torch.equal(ram.delete(gone), ssd.delete(gone))
        if step % 15 == 0:
            _same(ram, ssd)
    _same(ram, ssd)
    assert budget.over_budget_bytes == 0
    assert budget.evictions > 10_000 and budget.writebacks > 5_000 and budget.misses > len(ssd)
    assert ssd.storage.memory_bytes() <= (1 << 20) + 4 * 2 * ssd.storage.capacity
    assert ssd.get_slot("embedding").shape[0] * SLOT_BYTES <= (1 << 20) + 8 * SLOT_BYTES


def test_an_access_larger_than_the_budget_grows_past_it_with_a_warning(tmp_path):
    """A step whose rows do not fit the budget (1 MiB holds ~1.9k rows of 3 x 64 floats) gets
    them all: the cache grows past the budget by the shortfall, a RuntimeWarning names the table
    and the budget needed, and the rows stay equal to the in-RAM twin's."""
    ram, ssd = _pair(tmp_path, name="too_big")
    budget = ssd.storage.store.budget()
    g = torch.Generator().manual_seed(1)
    ids = torch.arange(5000)
    with pytest.warns(RuntimeWarning, match=r"table 'too_big': one access uses more distinct rows than its "
                                            r"cached_ssd cache can hold within cache_memory_budget_mb=1.*"
                                            r"Give a budget of at least 4 MiB"):
        for step in range(1, 4):
            grad = torch.randn(5000, DIM, generator=g)
            assert torch.equal(_step(ram, ids, grad, step), _step(ssd, ids, grad, step))
    _same(ram, ssd)
    assert budget.over_budget_bytes >= (5000 * SLOT_BYTES) - (1 << 20) - SLOT_BYTES
    # smaller steps afterwards evict within the grown cache and stay exact
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step in range(4, 10):
            few = torch.unique(torch.randint(0, 8000, (1000,), generator=g))
            grad = torch.randn(few.numel(), DIM, generator=g)
            assert torch.equal(_step(ram, few, grad, step), _step(ssd, few, grad, step))
    _same(ram, ssd)


def test_checkpoint_while_rows_are_cached_and_changed(tmp_path):
    """Save with changed rows in the cache (not yet in the files): the checkpoint holds the
    changed values; restoring it into a fresh file-backed table and into RAM gives the twin's
    rows, and training on continues identically."""
    from recis_compat.serialize import Loader, Saver

    ram, ssd = _pair(tmp_path / "store", name="ckpt_dirty")
    g = torch.Generator().manual_seed(2)
    for step in range(1, 8):
        ids = torch.unique(torch.randint(0, 6000, (1500,), generator=g))
        grad = torch.randn(ids.numel(), DIM, generator=g)
        _step(ram, ids, grad, step)
        _step(ssd, ids, grad, step)
    assert int(ssd.storage._cache.dirty.sum()) > 500, "the last steps' rows should still be changed in the cache"
    _same(ram, ssd)
    Saver(path=str(tmp_path / "ck"), hashtables={"ckpt_dirty": ssd}).save()
    for store in (None, StoreConfig("cached_ssd", str(tmp_path / "store2"), 1)):
        back = _table("ckpt_dirty", store)
        Loader(str(tmp_path / "ck"), hashtables={"ckpt_dirty": back}).load()
        assert back.storage.file_backed == (store is not None)
        _same(ram, back)
        if store is not None:
            for step in range(8, 12):                   # exact resume from the restored files
                ids = torch.unique(torch.randint(0, 7000, (1500,), generator=g))
                grad = torch.randn(ids.numel(), DIM, generator=g)
                _step(ram, ids, grad, step)
                _step(back, ids, grad, step)
            _same(ram, back)
        back.close()


def test_tables_of_one_budget_share_it_and_close_gives_it_back(tmp_path):
    """Three tables under one 1 MiB budget: a small table keeps all its rows, the two large ones
    split the rest; a table above its share (the shares moved when another grew) gives the
    excess back at its next access, so after one access each the caches are within the budget;
    rows stay exact throughout; closing a table returns its part."""
    store = StoreConfig("cached_ssd", str(tmp_path), 1)
    budget = store.budget()
    pairs = [_pair(tmp_path, name=f"share{i}", store=store) for i in range(3)]
    g = torch.Generator().manual_seed(3)
    universe = (150, 6000, 6000)                     # table 0 is small
    for step in range(1, 7):
        for (ram, ssd), hi in zip(pairs, universe):
            ids = torch.unique(torch.randint(0, hi, (600,), generator=g))
            grad = torch.randn(ids.numel(), DIM, generator=g)
            assert torch.equal(_step(ram, ids, grad, step), _step(ssd, ids, grad, step))
    for ram, ssd in pairs:                          # one more access each: excess given back
        assert torch.equal(ram.gather(ram.find_rows(torch.arange(50))), ssd.gather(ssd.find_rows(torch.arange(50))))
        _same(ram, ssd)
    caches = [ssd.storage._cache for _, ssd in pairs]
    assert 0 < budget.used_bytes() <= budget.limit_bytes
    assert int((caches[0].row_slot >= 0).sum()) == len(pairs[0][1]) == 150   # the small table: all cached
    # the small table's share is all its rows (256: one block) and its row index; the large ones
    # share the rest, each less its own row index (4 bytes per table row)
    small = caches[0].rows * (caches[0].slot_bytes + 4)
    rest = (budget.limit_bytes - small) // 2
    assert caches[0].rows == 256
    for c in caches[1:]:
        assert c.alloc == (rest - 4 * c.rows) // c.slot_bytes
    directory = pairs[1][1].storage.store_directory
    held = budget.used_bytes()
    pairs[1][1].close()
    assert not os.path.exists(directory)
    assert pairs[1][1].storage.memory_bytes() == 0
    assert held > budget.used_bytes() == sum(c.alloc * c.slot_bytes + 4 * c.rows for c in (caches[0], caches[2]))


def test_a_budget_above_the_table_reads_each_row_once(tmp_path):
    """With room for the whole table nothing is evicted: each row is read from its file once,
    later lookups are hits (one index gather), and the files are only written at growth."""
    ram, ssd = _pair(tmp_path, budget_mb=64, name="roomy")
    budget = ssd.storage.store.budget()
    g = torch.Generator().manual_seed(4)
    for step in range(1, 21):
        ids = torch.unique(torch.randint(0, 3000, (1000,), generator=g))
        grad = torch.randn(ids.numel(), DIM, generator=g)
        assert torch.equal(_step(ram, ids, grad, step), _step(ssd, ids, grad, step))
    _same(ram, ssd)
    assert budget.evictions == 0 and budget.writebacks == 0
    assert budget.misses == len(ssd)


def test_new_rows_are_filled_not_read_and_reused_rows_are_read(tmp_path, monkeypatch):
    """A miss on rows that growth initialised and nothing wrote since (new ids) fills the
    cache with the slots' initial values instead of reading the files; sampled embeddings are
    still read, as one run of whole records (one pread for every slot of 1000 new rows); a row
    freed by eviction and reused is read back (it was written)."""
    from recis_compat.backend import row_store
    calls, rows_read = [], []
    orig = row_store.rows_pread_

    def counting(fd, rows, out):
        calls.append(rows.numel())
        rows_read.append(int(1 + (rows[1:] != rows[:-1] + 1).sum()) if rows.numel() else 0)
        return orig(fd, rows, out)

    monkeypatch.setattr(row_store, "rows_pread_", counting)
    ram, ssd = _pair(tmp_path, name="fresh")
    g = torch.Generator().manual_seed(6)
    ids = torch.arange(1000)
    grad = torch.randn(1000, DIM, generator=g)
    assert torch.equal(_step(ram, ids, grad, 1), _step(ssd, ids, grad, 1))
    assert calls == [1000] and rows_read == [1]      # sampled initial rows: one run, every slot at once
    others = torch.arange(20_000, 21_200)              # pushes most of the first rows out
    grad = torch.randn(others.numel(), DIM, generator=g)
    assert torch.equal(_step(ram, others, grad, 2), _step(ssd, others, grad, 2))
    for t in (ram, ssd):
        t.delete(torch.arange(0, 1000, 2))             # their reset values go to the files
    calls.clear()
    reuse = torch.arange(30_000, 30_500)               # get the freed rows
    grad = torch.randn(reuse.numel(), DIM, generator=g)
    assert torch.equal(_step(ram, reuse, grad, 3), _step(ssd, reuse, grad, 3))
    assert sum(calls) >= 300                           # the reused rows' reset values, from the files
    _same(ram, ssd)


def test_a_row_moves_in_and_out_as_one_record_of_every_slot(tmp_path, monkeypatch):
    """The embedding and both moments of a row are one record of the table's one file: a miss on
    scattered evicted rows is one pread per row (run), not one per slot, and their write-back one
    copy of whole records per batch; values equal the in-RAM twin's."""
    from recis_compat.backend import row_store
    assert sorted(os.listdir(_pair(tmp_path, name="rec_probe")[1].storage.store_directory)) == ["rows"]
    runs = []
    orig = row_store.rows_pread_

    def counting(fd, rows, out):
        assert out.shape[1] * out.element_size() == DIM * 4 * 3   # whole records: embedding + exp_avg + exp_avg_sq
        runs.append(int(1 + (rows[1:] != rows[:-1] + 1).sum()) if rows.numel() else 0)
        return orig(fd, rows, out)

    ram, ssd = _pair(tmp_path, name="records")
    g = torch.Generator().manual_seed(3)
    first = torch.arange(0, 6000, 2)                   # rows 0..2999, written by the Adam steps
    grad = torch.randn(first.numel(), DIM, generator=g)
    assert torch.equal(_step(ram, first, grad, 1), _step(ssd, first, grad, 1))
    others = torch.arange(100_000, 104_000)            # 1 MiB holds ~1.3k rows: the first ones go
    grad = torch.randn(others.numel(), DIM, generator=g)
    assert torch.equal(_step(ram, others, grad, 2), _step(ssd, others, grad, 2))
    gone = first[ssd.storage._cache.row_slot.index_select(0, ssd.id_map.find(first)) < 0]   # (no access)
    assert gone.numel() >= 1000
    back = gone[torch.randperm(gone.numel(), generator=g)[:500]]     # 500 scattered evicted rows, read back
    rows = ssd.id_map.find(back)
    monkeypatch.setattr(row_store, "rows_pread_", counting)
    grad = torch.randn(back.numel(), DIM, generator=g)
    assert torch.equal(_step(ram, back, grad, 3), _step(ssd, back, grad, 3))
    expect_runs = int(1 + (torch.sort(rows).values.diff() != 1).sum())
    assert sum(runs) == expect_runs                    # one pread per run of rows for all three slots
    _same(ram, ssd)


def test_new_rows_of_constant_initial_values_are_never_read(tmp_path, monkeypatch):
    """With every slot's initial value known (a constant embedding initializer), a step on new
    ids reads nothing from the files: the rows are filled in the cache."""
    from recis_compat.backend import row_store
    from recis_compat.nn.initializers import ConstantInitializer
    from recis_compat.nn.modules.hashtable import HashTable, filter_out_sparse_param
    from recis_compat.optim import SparseAdamW
    calls = []
    orig = row_store.rows_pread_
    monkeypatch.setattr(row_store, "rows_pread_", lambda fd, rows, out: (calls.append(rows.numel()),
                                                                          orig(fd, rows, out))[1])
    store = StoreConfig("cached_ssd", str(tmp_path), 4)
    ht = HashTable([DIM], block_size=256, name="const_new", store=store,
                   initializer=ConstantInitializer(init_val=0.25))
    opt = SparseAdamW(filter_out_sparse_param(ht), lr=0.01)
    ids = torch.arange(0, 3000, 3)
    opt.zero_grad()
    ht(ids).sum().backward()
    opt.step()
    assert calls == []
    assert torch.allclose(ht.impl.gather(ht.impl.find_rows(ids)), torch.full((ids.numel(), DIM), 0.25), atol=0.02)
    ht.impl.close()


def _count_translations(monkeypatch) -> list:
    """A list that gets the row count of every ``row_cache_translate_`` call from now on."""
    calls = []
    orig = row_cache_mod.row_cache_translate_

    def counting(row_slot, rows, *a):
        calls.append(rows.numel())
        return orig(row_slot, rows, *a)

    monkeypatch.setattr(row_cache_mod, "row_cache_translate_", counting)
    return calls


def test_a_lookup_step_translates_its_rows_once(tmp_path, monkeypatch):
    """Find, gather and the optimizer's rows of one step share one translation (the gather and
    grad_rows get the find's rows tensor); a rows tensor changed in place, or rows moved in or
    out of the cache in between, is translated again and gives the right slots."""
    calls = _count_translations(monkeypatch)
    ram, ssd = _pair(tmp_path, budget_mb=4, name="once")
    g = torch.Generator().manual_seed(8)
    for step in range(1, 6):
        ids = torch.unique(torch.randint(0, 3000, (800,), generator=g))
        grad = torch.randn(ids.numel(), DIM, generator=g)
        calls.clear()
        assert torch.equal(_step(ram, ids, grad, step), _step(ssd, ids, grad, step))
        assert calls == [ids.numel()], f"step {step}: translations {calls}"
    _same(ram, ssd)
    cache = ssd.storage._cache
    rows = ssd.find_rows(torch.arange(0, 3000, 7))
    rows = rows[rows >= 0]
    s1 = cache.slots_of(rows)
    rows.add_(0).copy_(torch.flip(rows, [0]))        # same tensor, new contents
    s2 = cache.slots_of(rows, touch=False)
    assert torch.equal(s2, torch.flip(s1, [0]))
    assert torch.equal(cache.slot_row.index_select(0, s2), rows)


def test_access_numbers_restart_without_changing_rows_or_evictions(tmp_path, monkeypatch):
    """``last`` is int32: the access clock restarts (every slot's mark becomes 0 or 1) when it
    reaches the limit; with a limit of 9 it restarts every few steps, evictions go on and every
    row stays equal to the in-RAM twin's."""
    monkeypatch.setattr(row_cache_mod, "_CLOCK_LIMIT", 9)
    ram, ssd = _pair(tmp_path, name="clock")
    budget = ssd.storage.store.budget()
    cache = ssd.storage._cache
    g = torch.Generator().manual_seed(9)
    seen = set()
    for step in range(1, 25):
        ids = torch.unique(torch.randint(0, 6000, (1000,), generator=g))
        grad = torch.randn(ids.numel(), DIM, generator=g)
        assert torch.equal(_step(ram, ids, grad, step), _step(ssd, ids, grad, step))
        assert 1 <= cache.clock < 9
        seen.add(cache.clock)
    assert min(seen) <= 3 and budget.evictions > 5_000
    assert int(cache.last.max()) < 9 and int(cache.last.min()) >= 0
    _same(ram, ssd)


def test_accesses_past_the_share_reuse_the_slabs_instead_of_copying_them(tmp_path):
    """Steps each needing more rows than the budget holds grow the cache past its share, and the
    next access gives the excess back: the slabs stay where they are (their memory past the
    share is released, not copied into smaller tensors and grown again), and every row equals
    the in-RAM twin's."""
    ram, ssd = _pair(tmp_path, name="thrash")                  # 1 MiB: ~1.3k rows of 781 bytes
    cache = ssd.storage._cache
    g = torch.Generator().manual_seed(9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # the cache grew past the budget
        ptrs = []
        for step in range(1, 7):
            ids = torch.arange(step * 10_000, step * 10_000 + 3000)          # 3000 rows a step
            grad = torch.randn(ids.numel(), DIM, generator=g)
            assert torch.equal(_step(ram, ids, grad, step), _step(ssd, ids, grad, step))
            assert cache.alloc >= 3000
            ptrs.append((cache.slabs["embedding"].data_ptr(), cache.last.data_ptr()))
    assert ssd.storage.store.budget().over_budget_bytes > 0
    assert len(set(ptrs)) == 1, ptrs                          # one allocation for all six steps
    ssd.find_rows(torch.arange(60_000, 60_005))               # an access within the share shrinks it
    assert cache.alloc == cache._share and cache.slabs["embedding"].data_ptr() == ptrs[0][0]
    _same(ram, ssd)


def test_ids_seen_once_do_not_push_out_rows_looked_up_every_few_steps(tmp_path):
    """Scan resistance (backend/row_cache.py, probation): each step looks up a third of 450
    warm ids (each warm id every 3 steps) and 400 ids never seen before, through a cache of
    ~1.26k rows. Rows of new ids count as not used once their step's optimizer update is done,
    so after the warm ids' second appearance (steps 4-6, read back once) no warm row is read
    back again; a plain second-chance clock read back all 150 warm rows of every step (the new
    rows' second chance outlived the warm rows'). Every row stays equal to the in-RAM twin's."""
    ram, ssd = _pair(tmp_path, name="warm")
    budget = ssd.storage.store.budget()
    g = torch.Generator().manual_seed(12)
    warm = torch.arange(450) * 7 + 1_000_000
    read_back = []
    for step in range(1, 31):
        new = torch.arange(400 * step, 400 * (step + 1))
        ids = torch.cat([warm[step % 3::3], new])
        grad = torch.randn(ids.numel(), DIM, generator=g)
        misses, fresh = budget.misses, budget.fresh
        assert torch.equal(_step(ram, ids, grad, step), _step(ssd, ids, grad, step))
        read_back.append((budget.misses - misses) - (budget.fresh - fresh))
        assert budget.fresh - fresh == (550 if step <= 3 else 400)   # new ids filled, not read
    assert read_back[:3] == [0, 0, 0] and read_back[3:6] == [150, 150, 150]
    assert read_back[6:] == [0] * 24, read_back
    assert budget.evictions > 8_000 and budget.over_budget_bytes == 0
    _same(ram, ssd)


def test_probation_without_optimizer_steps_stays_bounded(tmp_path):
    """Lookups that insert new ids with no optimizer update in between (no write access ends
    their probation) keep at most the cache's slots on probation, and rows stay equal."""
    ram, ssd = _pair(tmp_path, name="lookups")
    cache = ssd.storage._cache
    for step in range(1, 21):
        ids = torch.arange(700 * step, 700 * (step + 1))
        assert torch.equal(ram.gather(ram.find_or_insert_rows(ids)), ssd.gather(ssd.find_or_insert_rows(ids)))
        assert cache._probation is not None and cache._probation[0].numel() <= cache.alloc
    g = torch.Generator().manual_seed(13)
    ids = torch.arange(13_300, 14_000)
    grad = torch.randn(ids.numel(), DIM, generator=g)
    assert torch.equal(_step(ram, ids, grad, 1), _step(ssd, ids, grad, 1))
    assert cache._probation is None                       # the optimizer's write access ended it
    _same(ram, ssd)


def test_new_rows_reach_the_file_once_their_step_is_done_and_leave_the_cache_clean(tmp_path):
    """Rows of new ids go to the files as runs at the access after their step's optimizer
    update (backend/row_cache.py ``_write_new``): the file then holds exactly the cached
    values, the rows are clean, and ids never used again are evicted with no write-back (the
    old path wrote every one of them back at eviction). Rows stay equal to the in-RAM twin's."""
    ram, ssd = _pair(tmp_path, name="fresh")
    budget = ssd.storage.store.budget()
    cache = ssd.storage._cache
    g = torch.Generator().manual_seed(21)
    for step in range(1, 16):
        ids = torch.arange(400 * step, 400 * (step + 1))
        grad = torch.randn(ids.numel(), DIM, generator=g)
        assert torch.equal(_step(ram, ids, grad, step), _step(ssd, ids, grad, step))
        if step == 2:
            # the next access (here a lookup of step 2's ids) writes step 2's rows
            written = budget.new_row_writes
            rows = ssd.find_rows(ids)
            assert budget.new_row_writes == written + 400
            slots = cache.row_slot.index_select(0, rows).long()
            assert bool((slots >= 0).all()) and not bool(cache.dirty.index_select(0, slots).any())
            for name, slab in cache.slabs.items():
                on_file = ssd.storage._files.read(name, rows)
                assert torch.equal(on_file, slab.index_select(0, slots)), f"slot {name} not written"
    assert budget.evictions > 3_000 and budget.writebacks == 0
    _same(ram, ssd)


def test_pwrite_of_long_runs_crosses_write_spans_exactly(tmp_path):
    """``rows_pwrite`` cuts a write at every 64 KiB boundary of the file
    (csrc/optim/rows_floor.cpp ``kWriteSpan``); runs crossing several boundaries from unaligned
    offsets, of rows that straddle them, land exactly where a pure-PyTorch copy puts them."""
    fd, data = _file(tmp_path, 20_000, [3, 7], torch.float32, seed=4)   # 84-byte rows
    try:
        g = torch.Generator().manual_seed(5)
        rows = torch.cat([torch.arange(37, 9_100), torch.arange(9_200, 19_999)])
        new = torch.randn([rows.numel(), 3, 7], generator=g)
        rows_pwrite(fd, rows, new)
        expect = data.clone()
        expect.index_copy_(0, rows, new)
        got = rows_pread_(fd, torch.arange(20_000), torch.empty([20_000, 3, 7]))
        assert torch.equal(got, expect)
    finally:
        os.close(fd)


def test_a_lookup_of_repeated_ids_translates_its_distinct_rows_once(tmp_path, monkeypatch):
    """A HashTable lookup of ids with repeats (a DeepFM batch) gathers ``rows[expand]`` through
    the distinct rows' cache slots: one translation per step, of the distinct rows only (the
    gather of the expanded positions and the optimizer's write access reuse it), and the
    lookups and rows equal those of the same table in RAM."""
    from recis_compat.nn.initializers import ConstantInitializer
    from recis_compat.nn.modules.hashtable import HashTable, filter_out_sparse_param
    from recis_compat.optim import SparseAdamW

    calls = _count_translations(monkeypatch)
    tables = []
    for name, store in (("rep_ram", None), ("rep_ssd", StoreConfig("cached_ssd", str(tmp_path), 1))):
        ht = HashTable([8], block_size=256, name=name, store=store, initializer=ConstantInitializer(init_val=0.1))
        tables.append((ht, SparseAdamW(filter_out_sparse_param(torch.nn.ModuleDict({"t": ht})), lr=0.01)))
    g = torch.Generator().manual_seed(31)
    for step in range(6):
        ids = torch.randint(0, 5000, (3000,), generator=g)
        distinct = torch.unique(ids).numel()
        out = []
        for ht, opt in tables:
            calls.clear()
            opt.zero_grad()
            emb = ht(ids)
            (emb * torch.arange(ids.numel()).unsqueeze(1)).sum().backward()
            opt.step()
            out.append(emb.detach())
        assert calls == [distinct], f"step {step}: translations {calls} for {distinct} distinct ids"
        assert torch.equal(out[0], out[1])
    _same(tables[0][0].impl, tables[1][0].impl)
