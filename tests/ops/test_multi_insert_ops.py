"""The multi-table insert and init ops of the DLRM train-speed work (issue 15 item 4) against the
per-table ops and pure-PyTorch references written from their contracts; opcheck; errors:

* ``id_map_find_or_insert_multi`` (csrc/embedding/multi_unique.cpp): ``id_map_find_or_insert``
  of several id maps in one call, with each map's new ids, new rows and row high-water mark;
* ``counter_uniform_rows_multi_`` (csrc/embedding/counter_init.cpp): U(low, high) per-id initial
  rows of several tables written in place, bit for bit ``UniformInitializer.sample_for_ids``."""
import pytest
import torch

from recis_compat.backend.id_map import IdMap
from recis_compat.nn.initializers import UniformInitializer
from recis_compat.ops import id_map as id_ops
from recis_compat.ops.multi_table import counter_uniform_rows_many_, find_or_insert_many

from reference_kernels import counter_uniform_ref


# ----------------------------------------------------------------------------- references
def insert_ref(state, ids, limit):
    """One map, the op's contract written with the per-map ops: ``(rows, new_ids, new_rows,
    [done, next_row, size + tombstones, absent])``."""
    table, meta, free = state
    n, used, cap = ids.numel(), int(meta[0] + meta[2]), table.shape[0] * 5
    if used + n > limit:
        found = id_ops.find(table, ids)
        absent = int((found < 0).sum())
        none = torch.zeros(0, dtype=torch.int64)
        if absent == 0:
            return found, none, none, [1, int(meta[1]), used, 0]
        if not (used + absent <= limit and n < cap - used):
            return none, none, none, [0, int(meta[1]), used, absent]
    else:
        absent = 0
    rows, is_new = id_ops.find_or_insert(table, meta, free, ids)
    return rows, ids[is_new], rows[is_new], [1, int(meta[1]), int(meta[0] + meta[2]), absent]


def uniform_rows_ref(table, rows, ids, seed, low, high):
    """``table[rows] = float32(low + (high - low) * u)`` from the torch-op counter uniforms."""
    u = counter_uniform_ref(ids, seed, table.shape[1])
    table.index_copy_(0, rows, (low + (high - low) * u).to(torch.float32).to(table.dtype))


def _maps(fills, seed=0, deleted=True, spare=64):
    """Id maps holding ``fills[k]`` ids (some deleted: rows on the free stack), grown for
    ``fills[k] + spare`` ids, and twins."""
    g = torch.Generator().manual_seed(seed)
    maps, twins = [], []
    for fill in fills:
        m = IdMap()
        m.reserve(fill + spare)
        first = torch.randperm(3 * fill + 100, generator=g)[:fill]
        m.find_or_insert(first)
        if deleted:
            m.delete(first[:37])
        maps.append(m)
        twins.append(IdMap.from_state_dict(m.state_dict()))
    return maps, twins


def _state(m):
    return m._table, m._meta, m._free


def _id_rows(m):
    ids, rows = m.ids_and_rows()
    order = torch.argsort(ids)
    return ids[order], rows[order]


def _same_map(a, b):
    """Same ids with the same rows, same meta (size, rows, tombstones, free count) and free
    stack (up to free_count: the stacks' spare lengths differ). Not the bucket layout: where a
    parallel insert puts an id in its probe sequence depends on which thread claims a slot
    first (csrc/embedding/id_map.cpp), in the per-map op too."""
    fa, fb = int(a._meta[3]), int(b._meta[3])
    ia, ra = _id_rows(a)
    ib, rb = _id_rows(b)
    return (a.capacity == b.capacity and torch.equal(ia, ib) and torch.equal(ra, rb)
            and torch.equal(a._meta, b._meta) and fa == fb and torch.equal(a._free[:fa], b._free[:fb]))


# ----------------------------------------------------------------------------- find_or_insert_multi
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("sizes", [(5, 0, 3000, 1), (9000, 12_000, 40, 4000)])   # serial / parallel paths
def test_insert_many_equals_the_per_map_ops(threads, sizes):
    # fills: room for every batch / a map near its load limit (known ids go in after a find;
    # a batch of new ids is left to IdMap) / a half-full map
    maps, twins = _maps([20_000, 11_000, 20_000, 6000][:len(sizes)])
    g = torch.Generator().manual_seed(5)
    ids = [torch.randperm(70_000, generator=g)[:n] - 3 for n in sizes]
    ids[-1] = torch.cat([ids[-1][:-1], torch.tensor([-(1 << 63)])])
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rows, new_ids, new_rows, counts = find_or_insert_many([m.insert_state() for m in maps], ids)
    finally:
        torch.set_num_threads(old)
    for k, (twin, x) in enumerate(zip(twins, ids)):
        want = insert_ref(_state(twin), x, twin.insert_state()[3])
        assert torch.equal(rows[k], want[0]) and torch.equal(new_ids[k], want[1]) and torch.equal(new_rows[k], want[2])
        assert counts[k] == want[3]
        assert _same_map(maps[k], twin)
    assert sum(n.numel() for n in new_ids) > 0     # the batches did insert


def test_insert_many_takes_the_batches_find_or_insert_makes_one_call_of():
    """Known ids near the load limit: found, nothing inserted; a few new ones: inserted after
    the find; too many new ones: left alone (IdMap.find_or_insert grows the map); room for the
    batch: inserted without a find. Where the op took the batch, the map equals a twin's after
    IdMap.find_or_insert(distinct=True)."""
    maps, twins = _maps([180, 180, 180, 20], deleted=False, spare=0)
    known = twins[0].ids_and_rows()[0]
    limit = maps[0].insert_state()[3]
    assert 180 + known.numel() > limit and 180 + 122 > limit
    ids = [known.flip(0), torch.cat([twins[1].ids_and_rows()[0][:120], torch.tensor([10**6, 10**6 + 1])]),
           torch.arange(10**6, 10**6 + 500), torch.arange(5)]
    rows, new_ids, new_rows, counts = find_or_insert_many([m.insert_state() for m in maps], ids)
    assert [c[0] for c in counts] == [1, 1, 0, 1]
    assert new_ids[0].numel() == 0 and torch.equal(new_ids[1], torch.tensor([10**6, 10**6 + 1]))
    assert rows[2].numel() == 0 and _same_map(maps[2], twins[2])
    for k in (0, 1, 3):
        want_rows, is_new = twins[k].find_or_insert(ids[k], distinct=True)
        assert torch.equal(rows[k], want_rows) and torch.equal(new_rows[k], want_rows[is_new])
        assert _same_map(maps[k], twins[k]) and counts[k][1:3] == [int(twins[k]._meta[1]), len(twins[k])]
    assert counts[2][3] == 500 and counts[1][3] == 2 and counts[3][3] == 0


def test_insert_many_of_no_map():
    assert find_or_insert_many([], []) == ([], [], [], [])


def test_insert_many_bad_inputs_change_no_map_and_name_it():
    maps, _ = _maps([300, 400])
    before = [[t.clone() for t in _state(m)] for m in maps]
    op = torch.ops.recis_compat.id_map_find_or_insert_multi
    tables, metas, frees, limits = (list(x) for x in zip(*[m.insert_state() for m in maps]))
    with pytest.raises(RuntimeError, match=r"id_map_find_or_insert_multi \(map 1\): 'ids' must be an int64"):
        op(tables, metas, frees, [torch.tensor([5]), torch.tensor([1.0])], limits)
    with pytest.raises(RuntimeError, match="got 2 tables, 2 metas, 2 free_rows, 1 id lists and 2 limits"):
        op(tables, metas, frees, [torch.tensor([5])], limits)
    with pytest.raises(RuntimeError, match="maps 0 and 1 are the same map"):
        op([tables[0], tables[0]], [metas[0], metas[0]], [frees[0], frees[0]], [torch.tensor([5]), torch.tensor([6])],
           [limits[0]] * 2)
    with pytest.raises(RuntimeError, match=r"limits\[1\] must be in \[0, capacity"):
        op(tables, metas, frees, [torch.tensor([5]), torch.tensor([6])], [limits[0], 10**9])
    for m, b in zip(maps, before):
        assert all(torch.equal(x, y) for x, y in zip(_state(m), b))


def test_insert_many_opcheck():
    maps, _ = _maps([10, 10], deleted=False)
    tables, metas, frees, limits = (list(x) for x in zip(*[m.insert_state() for m in maps]))
    torch.library.opcheck(torch.ops.recis_compat.id_map_find_or_insert_multi.default,
                          (tables, metas, frees, [torch.tensor([1, 99_999, 3]), torch.tensor([88_888])], limits),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


# ----------------------------------------------------------------------------- counter_uniform_rows_multi_
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniform_rows_match_the_reference_and_sample_for_ids(dtype):
    g = torch.Generator().manual_seed(9)
    dims, counts = (32, 1, 7, 16), (2000, 5, 0, 30_000)       # the last one takes the threaded path
    tables = [torch.randn(n + 10, d, generator=g).to(dtype) for d, n in zip(dims, counts)]
    rows = [torch.randperm(n + 10, generator=g)[:n] for n in counts]
    ids = [torch.randint(-(1 << 62), 1 << 62, (n,), generator=g) for n in counts]
    seeds, lows, highs = [3, -(1 << 63), 1 << 64 | 5, 0], [-0.05, 0.0, -1e-3, 2.0], [0.05, 1.0, 1e-3, 2.0]
    want = [t.clone() for t in tables]
    for t, r, i, s, lo, hi in zip(want, rows, ids, seeds, lows, highs):
        uniform_rows_ref(t, r, i, s, lo, hi)
    counter_uniform_rows_many_(tables, rows, ids, seeds, lows, highs)
    for t, w in zip(tables, want):
        assert torch.equal(t, w)
    # the values an initializer gives for new ids (nn/initializers.py), bit for bit
    init = UniformInitializer(lows[0], highs[0])
    init.set_shape([5, dims[0]])
    init.set_dtype(dtype)
    init.build()
    assert torch.equal(tables[0][rows[0]], init.sample_for_ids(ids[0], seeds[0]))


def test_uniform_rows_bad_inputs_write_nothing_and_name_the_table():
    tables = [torch.zeros(4, 3), torch.zeros(2, 3)]
    op = torch.ops.recis_compat.counter_uniform_rows_multi_
    ok = (torch.tensor([0]), torch.tensor([11]))
    with pytest.raises(RuntimeError, match=r"rows\[1\] holds row 2 but tables\[1\] has rows 0..1"):
        op(tables, [ok[0], torch.tensor([1, 2])], [ok[1], torch.tensor([5, 6])], [1, 1], [0.0, 0.0], [1.0, 1.0])
    with pytest.raises(RuntimeError, match=r"tables\[1\] must be a 2-D float32 or float64 tensor"):
        op([tables[0], torch.zeros(2, 3, dtype=torch.bfloat16)], [ok[0], ok[0]], [ok[1], ok[1]], [1, 1], [0.0, 0.0],
           [1.0, 1.0])
    with pytest.raises(RuntimeError, match=r"rows\[0\] and ids\[0\] must be 1-D int64 of one length"):
        op(tables[:1], [ok[0]], [torch.tensor([1, 2])], [1], [0.0], [1.0])
    with pytest.raises(RuntimeError, match="table 0 needs low <= high"):
        op(tables[:1], [ok[0]], [ok[1]], [1], [1.0], [0.0])
    with pytest.raises(RuntimeError, match=r"tables\[0\] must be contiguous"):
        op([torch.zeros(4, 6)[:, ::2]], [ok[0]], [ok[1]], [1], [0.0], [1.0])
    assert all(not bool(t.any()) for t in tables)


def test_uniform_rows_opcheck():
    torch.library.opcheck(torch.ops.recis_compat.counter_uniform_rows_multi_.default,
                          ([torch.zeros(5, 3), torch.zeros(2, 4, dtype=torch.float64)],
                           [torch.tensor([4, 0]), torch.tensor([1])], [torch.tensor([8, 9]), torch.tensor([-1])],
                           [7, 8], [-0.5, 0.0], [0.5, 1.0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    maps, twins = _maps([300, 180])
    for m in twins:
        m.to("cuda")
    ids = [torch.tensor([1, 70_000, 70_001]), torch.arange(10**6, 10**6 + 500)]
    want = find_or_insert_many([m.insert_state() for m in maps], ids)
    got = find_or_insert_many([m.insert_state() for m in twins], [i.cuda() for i in ids])
    for a, b in zip(want[:3], got[:3]):
        assert all(torch.equal(x, y.cpu()) for x, y in zip(a, b))
    assert want[3] == got[3]
    tables = [torch.zeros(4, 3), torch.zeros(2, 5)]
    args = ([torch.tensor([3, 0]), torch.tensor([1])], [torch.tensor([8, 9]), torch.tensor([-1])], [7, 8],
            [-0.5, 0.0], [0.5, 1.0])
    cuda_tables = [t.cuda() for t in tables]
    counter_uniform_rows_many_(tables, *args)
    counter_uniform_rows_many_(cuda_tables, [a.cuda() for a in args[0]], [a.cuda() for a in args[1]], *args[2:])
    assert all(torch.equal(a, b.cpu()) for a, b in zip(tables, cuda_tables))
