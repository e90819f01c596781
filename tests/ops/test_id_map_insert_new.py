"""``id_map_insert_new`` (csrc/embedding/id_map.cpp, CPU): the insert of a batch expected to hold
only new, distinct ids (``IdMap.find_or_insert(expect_new=True)``). When the guess holds, table
contents, meta and rows equal ``id_map_find_or_insert``'s; when an id is stored already or
repeats, the table and meta are left bit for bit as they were and ``ok`` is false -- whatever
the thread count, also for ids whose probe path crosses the bucket ranges the threads own."""
import numpy as np
import pytest
import torch

from recis_compat.backend.id_map import IdMap
from recis_compat.ops import id_map as ops

LANES = ops.LANES


def _ids(n, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.unique(torch.randint(-(2 ** 63), 2 ** 63 - 1, (n + n // 8,), generator=g, dtype=torch.int64))[:n]
    return ids[torch.randperm(ids.numel(), generator=g)]


def _state(stored, capacity):
    table = torch.full((-(-capacity // LANES), 8), -1, dtype=torch.int64)
    meta = torch.zeros(4, dtype=torch.int64)
    free = torch.zeros(0, dtype=torch.int64)
    ops.find_or_insert(table, meta, free, stored)
    return table, meta, free


def _states(table):
    return table.view(torch.int32)[:, 2 * LANES:3 * LANES].clone()


def _clustered(nb, per_end, seed):
    """Ids whose home bucket (in a table of nb buckets) is one of the 3 buckets before each
    quarter of the table and before its end: they overflow into the next range / wrap around."""
    from test_id_map_rehash import _home
    g = torch.Generator().manual_seed(seed)
    pool = torch.randint(-(2 ** 63), 2 ** 63 - 1, (300_000,), generator=g, dtype=torch.int64)
    home = _home(pool, nb)
    picked = [pool[torch.from_numpy(np.nonzero((home >= e - 3) & (home < e))[0][:per_end])]
              for e in (nb // 4, nb // 2, 3 * nb // 4, nb)]
    return torch.cat(picked)


@pytest.mark.parametrize("threads", [1, 2, 3, 4])
def test_all_new_batches_equal_find_or_insert(threads):
    stored = _ids(30_000, 1)
    nb = -(-120_000 // LANES)
    batch = torch.cat([_ids(40_000, 2), _clustered(nb, 40, 3)])
    batch = batch[torch.randperm(batch.numel(), generator=torch.Generator().manual_seed(4))]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        t1, m1, f1 = _state(stored, 120_000)
        t2, m2, f2 = _state(stored, 120_000)
        ops.delete(t1, m1, torch.zeros(30_000, dtype=torch.int64), stored[:700])    # free stack + tombstones
        free = torch.zeros(30_000, dtype=torch.int64)
        ops.delete(t2, m2, free, stored[:700])
        r1, n1 = ops.find_or_insert(t1, m1, free, batch)
        r2, ok = ops.insert_new(t2, m2, free, batch)
    finally:
        torch.set_num_threads(before)
    assert ok and bool(n1.all())
    assert torch.equal(r1, r2) and torch.equal(m1, m2)
    everything = torch.cat([stored, batch, _ids(500, 9)])
    assert torch.equal(ops.find(t1, everything), ops.find(t2, everything))
    assert torch.equal(ops.export(t1, m1)[0], ops.export(t2, m2)[0])


@pytest.mark.parametrize("threads", [1, 2, 4])
@pytest.mark.parametrize("wrong", ["repeat", "repeat_far", "stored", "clustered_repeat", "clustered_stored"])
def test_a_stored_or_repeated_id_leaves_the_table_as_it_was(threads, wrong):
    stored = _ids(30_000, 5)
    nb = -(-120_000 // LANES)
    fresh = _ids(40_000, 6)
    clustered = _clustered(nb, 40, 7)
    table, meta, free = _state(torch.cat([stored, clustered[:3]]), 120_000)
    extra = {"repeat": fresh[100:101], "repeat_far": fresh[39_000:39_001], "stored": stored[5:6],
             "clustered_repeat": clustered[50:51], "clustered_stored": clustered[:1]}[wrong]
    batch = torch.cat([fresh[:20_000], clustered[3:], extra, fresh[20_000:]])
    states, words, meta0 = _states(table), table.clone(), meta.clone()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        _, ok = ops.insert_new(table, meta, free, batch)
    finally:
        torch.set_num_threads(before)
    assert not ok
    assert torch.equal(_states(table), states) and torch.equal(meta, meta0)
    assert torch.equal(table, words)      # bit for bit: empty slots' key words are -1 again
    # the map still answers as before, and the general insert then takes the batch
    assert torch.equal(ops.find(table, stored), torch.arange(30_000))
    rows, new = ops.find_or_insert(table, meta, free, batch)
    assert int(meta[0]) == 30_003 + int(new.sum())


def test_errors_and_opcheck():
    table, meta, free = _state(torch.tensor([3, -9, 44]), 32)
    torch.library.opcheck(torch.ops.recis_compat.id_map_insert_new.default,
                          (table, meta, free, torch.tensor([5, 7, -(2 ** 63)])))
    with pytest.raises(RuntimeError, match="id_map_insert_new: a batch of 40 ids may not fit"):
        ops.insert_new(table, meta, free, torch.arange(100, 140))
    with pytest.raises(RuntimeError, match="id_map_insert_new: 'ids' must be an int64"):
        ops.insert_new(table, meta, free, torch.tensor([1.0]))
    rows, ok = ops.insert_new(table, meta, free, torch.zeros(0, dtype=torch.int64))
    assert ok and rows.numel() == 0


def test_growing_idmap_inserts_with_it_and_falls_back(monkeypatch):
    """``IdMap.find_or_insert(expect_new=True)`` on the CPU inserts a batch that fits with
    ``insert_new`` (no ``find_or_insert`` call); a batch with a stored id is undone
    (``num_undone_inserts``) and inserted by ``find_or_insert``: rows and new marks equal the
    counted map's either way."""
    import recis_compat.backend.id_map as id_map_module
    calls = []
    real = id_map_module._ops.find_or_insert
    monkeypatch.setattr(id_map_module._ops, "find_or_insert",
                        lambda *a: calls.append(a[-1].numel()) or real(*a))
    guessed, counted = IdMap(), IdMap()
    first = _ids(5000, 8)
    for m in (guessed, counted):
        m.find_or_insert(first)
        m.reserve(20_000)
    calls.clear()
    batch = _ids(4000, 9)
    r1, n1 = guessed.find_or_insert(batch, expect_new=True)
    assert calls == [] and bool(n1.all())
    r2, n2 = counted.find_or_insert(batch)
    assert torch.equal(r1, r2) and torch.equal(n1, n2)
    mixed = torch.cat([_ids(3000, 10), first[:2]])
    r1, n1 = guessed.find_or_insert(mixed, expect_new=True)
    r2, n2 = counted.find_or_insert(mixed)
    assert torch.equal(r1, r2) and torch.equal(n1, n2)
    assert guessed.num_undone_inserts == 1
    assert torch.equal(guessed.ids_and_rows()[0], counted.ids_and_rows()[0])


def test_many_threads_take_find_or_insert(monkeypatch):
    """Beyond ``_INSERT_NEW_MAX_THREADS`` threads (every thread walks the whole batch) the map
    inserts an expect_new batch with ``find_or_insert``; the result is the same."""
    import recis_compat.backend.id_map as id_map_module
    used = []
    real = id_map_module._ops.insert_new
    monkeypatch.setattr(id_map_module._ops, "insert_new", lambda *a: used.append(1) or real(*a))
    before = torch.get_num_threads()
    try:
        for threads, expect in ((id_map_module._INSERT_NEW_MAX_THREADS + 2, []), (2, [1])):
            torch.set_num_threads(threads)
            used.clear()
            m = IdMap()
            m.reserve(10_000)
            rows, new = m.find_or_insert(_ids(4000, 11), expect_new=True)
            assert used == expect and torch.equal(rows, torch.arange(4000)) and bool(new.all())
    finally:
        torch.set_num_threads(before)
