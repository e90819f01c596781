"""The growing-table shortcuts of a training lookup (issue 14 item 4, ``bench hashtable`` growth):

* ``DynamicTable.lookup`` gathers the ``N`` rows once (``expand``) and, when every id of the
  batch is distinct, skips the expansion and its gradient sum; the occurrence counts are
  computed only for ``grad_reduce_by="id"``; while a table grows (batches of new distinct
  ids) the next batch goes to the id map without the dedupe (backend/dynamic_table.py);
* ``DynamicTableImpl.find_or_insert_rows`` writes the initial values of a batch of new ids that
  took consecutive rows with one copy into the row range (backend/table_impl.py).

Values and gradients are compared bit for bit with the general path (the lookup as it was:
``unique_first_seen`` with counts, ``lookup_unique``, ``gather_rows``).
"""
import pytest
import torch

from recis.nn import HashTable
from recis.nn.initializers import ConstantInitializer, UniformInitializer
from recis_compat.ops.id_map import unique_first_seen
from recis_compat.ops.pooling import gather_rows

_names = iter(range(10 ** 6))


def _table(grad_reduce_by="worker", world_size=1, init=None):
    init = init if init is not None else UniformInitializer(-0.5, 0.5, generator=torch.Generator().manual_seed(5))
    return HashTable([4], block_size=16, name=f"growth_paths_{next(_names)}", grad_reduce_by=grad_reduce_by,
                     world_size=world_size, initializer=init)


def _reference_lookup(table, ids):
    """The general path as DynamicTable.lookup ran it before the shortcuts."""
    flat = ids.reshape(-1)
    uniq, inverse, counts = unique_first_seen(flat, return_counts=True)
    return gather_rows(table.lookup_unique(uniq, False, counts), inverse)


def _bits(t):
    return t.contiguous().view(torch.int32)


def _grad_of(ht, lookup, ids, upstream):
    """Rows and the buffered gradient after one lookup and backward with gradient ``upstream``."""
    impl = ht.impl
    impl.clear_grad()
    with impl.lock:
        out = lookup(ht._table, ids)
    out.backward(upstream)
    rows, g = impl.summed_grad()
    return out.detach().clone(), rows.clone(), g.clone()


def _batches():
    """Batches that walk every path of DynamicTable.lookup: new distinct ids (general path, then
    the growing path), known ids with repeats (growing path falling back), new distinct ids
    again, new ids with repeats (growing path falling back), known distinct ids."""
    g = torch.Generator().manual_seed(11)
    a, b, c, d = (torch.randint(0, 1 << 40, (300,), generator=g) * 4 + k for k in range(4))
    return [a, b, torch.cat([b, b[:50], a[7:9]]), c, torch.cat([d, d[:40]]), d.flip(0)]


@pytest.mark.parametrize("grad_reduce_by,world", [("worker", 1), ("worker", 2), ("id", 1)])
def test_lookup_values_and_gradients_equal_the_general_path(grad_reduce_by, world):
    """Outputs, rows, the id map's capacity and the gradients reaching the table (signs of zero
    included: a gradient of -0.0 arrives as +0.0, as the sum into zeros gave) equal the general
    path's, batch after batch, for distinct ids and repeats, new and known, under every
    grad_reduce_by."""
    got, want = _table(grad_reduce_by, world), _table(grad_reduce_by, world)
    g = torch.Generator().manual_seed(12)
    for step, ids in enumerate(_batches()):
        upstream = torch.randn(ids.numel(), 4, generator=g)
        upstream[::5, 1] = -0.0
        upstream[1::7] = 0.0
        a = _grad_of(got, lambda t, x: t.lookup(x), ids, upstream)
        b = _grad_of(want, _reference_lookup, ids, upstream)
        for x, y in zip(a, b):
            assert x.dtype == y.dtype and torch.equal(x, y), step
        assert torch.equal(_bits(a[2]), _bits(b[2])), f"gradient bits (signs of zero) differ at batch {step}"
        assert torch.equal(got.impl.ids_map()[0], want.impl.ids_map()[0])
        # the map grows as the general path's (a batch's repeats are not counted as new ids)
        assert got.impl.id_map.capacity == want.impl.id_map.capacity, step
    assert torch.equal(got.impl.embedding, want.impl.embedding)


def test_growing_lookups_skip_the_dedupe(monkeypatch):
    """After a batch of new distinct ids, the next batch goes to the id map without the dedupe
    (unique_first_seen) when its ids are all new; a batch with a known or repeated id takes
    the dedupe after the insert and ends the growing mode."""
    import recis_compat.backend.dynamic_table as dt
    calls = []
    real = dt.unique_first_seen
    monkeypatch.setattr(dt, "unique_first_seen", lambda *a, **k: calls.append(1) or real(*a, **k))
    ht = _table()
    batches = _batches()
    ht(batches[0])
    assert len(calls) == 1
    ht(batches[1])
    assert len(calls) == 1                                 # all new: no dedupe
    ht(batches[2])
    assert len(calls) == 2                                 # known ids: dedupe after the insert
    ht(batches[3])
    assert len(calls) == 3                                 # general path again, growing after it
    ht.eval()
    ht(batches[3])                                         # eval: dedupe, the mode unchanged
    assert len(calls) == 4
    ht.train()
    ht(batches[4][:300])                                   # new distinct ids: no dedupe
    assert len(calls) == 4


def _nodes(out):
    """Names of the autograd nodes from ``out`` down to the table's (views skipped)."""
    names, fn = [], out.grad_fn
    while fn is not None:
        names.append(type(fn).__name__)
        nxt = [f for f, _ in fn.next_functions if f is not None]
        fn = nxt[0] if nxt and "RowsToTable" not in names[-1] else None
    return [n for n in names if not n.startswith("View")]


def test_lookups_gather_once_and_distinct_batches_skip_the_expansion():
    """The output is the rows' node itself (no gather_rows node after it, whose forward copied
    the [U, D] rows again and whose backward summed into a zeroed buffer), with repeats too
    (one gather of the N rows); a batch of distinct ids saves no index with it."""
    ht = _table()
    distinct = ht(torch.arange(100, dtype=torch.int64) * 7)
    assert _nodes(distinct) == ["_RowsToTableBackward"]
    assert len(distinct.grad_fn.next_functions[0][0].saved_tensors) == 1       # the rows only
    repeats = ht(torch.tensor([1, 1, 2], dtype=torch.int64))
    assert _nodes(repeats) == ["_RowsToTableBackward"]
    assert len(repeats.grad_fn.next_functions[0][0].saved_tensors) == 2        # rows, expand


def test_counts_only_for_grad_reduce_by_id(monkeypatch):
    """grad_reduce_by='worker' lookups do not count occurrences (the bincount pass over the
    inverse); 'id' ones do, and divide the gradient by them."""
    calls = []
    real = torch.bincount

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(torch, "bincount", counting)
    ids = torch.tensor([5, 9, 5, 5, 11], dtype=torch.int64)
    worker = _table("worker")
    worker(ids).sum().backward()
    assert calls == []
    by_id = _table("id")
    by_id(ids).sum().backward()
    assert calls
    rows, grad = by_id.impl.summed_grad()
    assert torch.equal(grad, torch.ones(3, 4))            # 3/3, 1/1, 1/1


@pytest.mark.parametrize("init", [None, ConstantInitializer(init_val=0.25)])
def test_new_rows_written_as_one_range_hold_their_initial_values(monkeypatch, init):
    """A batch of new ids that took consecutive rows (no freed rows) is written with one copy
    into the row range, not through write_rows; batches that reuse freed rows take write_rows.
    Either way every row holds init_rows(its id), as the per-row write gave."""
    ht = _table(init=init)
    impl = ht.impl
    writes = []
    real = impl.storage.write_rows

    def spy(name, rows, values):
        writes.append(rows.numel())
        return real(name, rows, values)

    monkeypatch.setattr(impl.storage, "write_rows", spy)
    impl.track_changes()
    first = torch.arange(40, dtype=torch.int64) * 11 + 3
    with torch.no_grad():
        impl.find_or_insert_rows(first)
    assert writes == []
    assert torch.equal(impl.take_changes().ids, first)
    impl.delete(first[5:10])
    writes.clear()
    second = torch.tensor([1000, 1001, 1002, 1003, 1004, 1005, 1006], dtype=torch.int64)
    impl.find_or_insert_rows(second)                     # 5 freed rows, then 2 new ones
    assert writes == [7]
    ids, rows = impl.ids_map()
    assert torch.equal(impl.embedding[rows], impl.init_rows(ids).to(impl.dtype))


def test_growth_bench_reports_minor_faults():
    """``bench hashtable``'s growth case reports the minor page faults of both timed loops (a
    count independent of the CPU share) and the rehashes of both maps. The module is loaded from this repository's
    benchmarks/ directory (an installed recis_compat.benchmarks may point elsewhere)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "hashtable_bench.py"
    spec = importlib.util.spec_from_file_location("recis_compat.benchmarks._hashtable_bench_under_test", path)
    hb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hb)
    got = hb._growth(3 * 4096, 4096, 8)
    assert got["ids"] == 4 * 4096
    faults = got["minor_faults"]
    assert set(faults) == {"ours", "id_map"} and all(isinstance(v, int) and v >= 0 for v in faults.values())
    # the trained table grows its map as the map alone does (the growing lookups' batches go into
    # copies grown for them, none dropped: every id is new)
    rehashes = got["map_rehashes"]
    assert rehashes["ours"] == rehashes["id_map"] >= 1 and rehashes["ours_discarded"] == 0


def test_growing_lookup_counts_only_its_own_new_ids(monkeypatch):
    """The growing path decides "every id new" from the map's size change under the table lock:
    an insert from another thread right after this batch's insert waits for the decision, so a
    batch with repeats is not taken for distinct (its gradient is summed per id)."""
    import threading

    ht = _table()
    ht(torch.arange(50, dtype=torch.int64) * 3 + 1)       # new distinct ids: growing mode
    impl = ht.impl
    real = type(impl).find_or_insert_rows
    helpers = []

    def insert_then_race(self, ids, *a, **k):
        rows = real(self, ids, *a, **k)
        if not helpers:               # another thread inserts 2 new ids right now
            h = threading.Thread(target=lambda: real(self, torch.tensor([10 ** 9, 10 ** 9 + 1])))
            helpers.append(h)
            h.start()
            h.join(timeout=0.3)
        return rows

    monkeypatch.setattr(type(impl), "find_or_insert_rows", insert_then_race)
    batch = torch.tensor([7000, 7001, 7002, 7000, 7003, 7001, 7004, 7005, 7006, 7007, 7008, 7009])
    impl.clear_grad()
    ht._table.lookup(batch).sum().backward()
    helpers[0].join()
    rows, grad = impl.summed_grad()
    assert rows.numel() == 10 and torch.unique(rows).numel() == 10
    assert torch.equal(grad[:2], torch.full((2, 4), 2.0)) and torch.equal(grad[2:], torch.ones(8, 4))
    assert len(impl) == 50 + 10 + 2


def test_growing_lookups_grow_the_map_without_counting_their_batch(monkeypatch):
    """While a table grows, a batch that makes its id map grow goes into a copy grown for all of
    it (``IdMap.find_or_insert(expect_new=True)``): no find or dedupe of the batch inside the
    map, and rows, values, gradients and capacity equal the general path's batch after batch."""
    import recis_compat.backend.id_map as id_map_module

    big, watching = [], []
    for name in ("find", "unique_first_seen"):
        real = getattr(id_map_module._ops, name)

        def spy(*args, _real=real, _name=name):
            ids = args[-1] if _name == "find" else args[0]
            if watching and ids.numel() > id_map_module._GUESS_PROBE:
                big.append((_name, watching[:]))
            return _real(*args)
        monkeypatch.setattr(id_map_module._ops, name, spy)
    got, want = _table(), _table()
    g = torch.Generator().manual_seed(21)
    rehashes = []
    for step in range(10):
        ids = torch.randint(0, 1 << 50, (1500,), generator=g) * 2 + 1      # new and distinct
        upstream = torch.randn(ids.numel(), 4, generator=g)
        watching[:] = [step] if step else []      # the first batch takes the general path
        a = _grad_of(got, lambda t, x: t.lookup(x), ids, upstream)
        watching.clear()
        b = _grad_of(want, _reference_lookup, ids, upstream)
        for x, y in zip(a, b):
            assert torch.equal(x, y), step
        assert got.impl.id_map.capacity == want.impl.id_map.capacity, step
        rehashes.append(got.impl.id_map.num_rehashes)
    assert big == [] and rehashes[-1] > rehashes[0] + 1
    assert got.impl.id_map.num_discarded_rehashes == 0
    assert torch.equal(got.impl.embedding, want.impl.embedding)
