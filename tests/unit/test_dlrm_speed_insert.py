"""The DLRM train-speed work, third round (issue 15 item 4): the id-map inserts and the new rows'
initial values of a run of tables in one csrc call each (``find_or_insert_rows_many``,
backend/table_impl.py; ``EmbeddingEngine.lookup_run`` through ``DynamicTable.lookup_rows_many``),
against ``find_or_insert_rows`` per table over several growing steps, bit for bit: rows, ids,
counters, id-map growth, change logs, evictions, values and every generator's draws; and the
per-table fallbacks (file-backed tables, batches the map inserts in chunks, a table given twice)."""
import pytest
import torch

from recis.nn import EmbeddingEngine
from recis.nn.initializers import UniformInitializer
from recis.nn.modules.hashtable import HashTable
from recis.optim import SparseAdamW
from recis_compat.backend import table_impl as table_module
from recis_compat.backend.children import ChildrenInfo
from recis_compat.backend.row_store import StoreConfig
from recis_compat.backend.table_impl import DynamicTableImpl, UniformIdInit, find_or_insert_rows_many
from recis_compat.ops.counter_init import counter_uniform

from engine_train_helpers import train_engine
from test_dlrm_speed_fused import PerGroupEngine, _assert_same, _batch, _options

DIM = 6


def _uniform_fn(low, high, seed):
    return lambda ids: (low + (high - low) * counter_uniform(ids, seed, DIM)).to(torch.float32)


def _specs(tmp_path):
    """(name, kwargs of DynamicTableImpl) of tables with every kind of initial values."""
    gen = torch.Generator().manual_seed(3)
    return [
        ("uniform", dict(init_rows=UniformIdInit(_uniform_fn(-0.1, 0.1, 11), lambda: (-0.1, 0.1, 11)))),
        ("normal_ids", dict(init_rows=lambda ids: torch.erfinv(2 * counter_uniform(ids, 5, DIM) - 1).float())),
        ("own_generator", dict(sample_rows=lambda k: torch.rand(k, DIM, generator=gen))),
        ("global_rng", dict(sample_rows=lambda k: torch.randn(k, DIM))),
        ("tracked", dict(init_rows=UniformIdInit(_uniform_fn(0.0, 2.0, -7), lambda: (0.0, 2.0, -7)))),
        ("file_backed", dict(init_rows=UniformIdInit(_uniform_fn(-1.0, 1.0, 4), lambda: (-1.0, 1.0, 4)),
                             store=StoreConfig("cached_ssd", str(tmp_path), 4))),
        ("evicting", dict(init_rows=UniformIdInit(_uniform_fn(-0.5, 0.5, 8), lambda: (-0.5, 0.5, 8)))),
        ("float64", dict(init_rows=UniformIdInit(lambda ids: _uniform_fn(-3.0, 3.0, 2)(ids).double(),
                                                 lambda: (-3.0, 3.0, 2)), dtype=torch.float64)),
    ]


def _impls(tmp_path, tag):
    out = []
    for name, kw in _specs(tmp_path / tag):
        kw = dict(kw)
        dtype = kw.pop("dtype", torch.float32)
        sample = kw.pop("sample_rows", None)
        impl = DynamicTableImpl(name, DIM, dtype, "cpu", sample, 7, ChildrenInfo([name], False, name), **kw)
        out.append(impl)
    out[4].track_changes()
    return out


def _state(impl):
    ids, rows = impl.ids_map()
    return dict(ids=ids, rows=rows, emb=impl.read_slot("embedding", rows), size=len(impl),
                allocated=impl.id_map.num_rows_allocated(), free=impl.id_map.num_free_rows(),
                capacity=impl.storage.capacity, map_capacity=impl.id_map.capacity,
                rehashes=impl.id_map.num_rehashes, evicted=impl.evicted_total)


def _assert_tables_equal(a, b):
    for x, y in zip(a, b):
        sx, sy = _state(x), _state(y)
        for key in sx:
            if isinstance(sx[key], torch.Tensor):
                assert torch.equal(sx[key], sy[key]), (x.name, key)
            else:
                assert sx[key] == sy[key], (x.name, key)


def _step_ids(step, n_tables):
    """Distinct ids per table: known ones and a growing number of new ones."""
    g = torch.Generator().manual_seed(50 + step)
    return [torch.randperm(300 * (step + 1) + 40 * k, generator=g)[:150 * (step + 1) + 13 * k] - 5
            for k in range(n_tables)]


def test_multi_insert_equals_the_per_table_insert_over_growing_steps(tmp_path, monkeypatch):
    fused_calls, uniform_calls = [], []
    real_many, real_uniform = table_module.find_or_insert_many, table_module.counter_uniform_rows_many_

    def spy(states, ids):
        got = real_many(states, ids)
        fused_calls.append([c[0] for c in got[3]])
        return got
    monkeypatch.setattr(table_module, "find_or_insert_many", spy)
    monkeypatch.setattr(table_module, "counter_uniform_rows_many_",
                        lambda tables, *a: uniform_calls.append(len(tables)) or real_uniform(tables, *a))
    multi, single = _impls(tmp_path, "multi"), _impls(tmp_path, "single")
    for step in range(8):
        ids = _step_ids(min(step, 5), len(multi))      # growing, then the same ids again
        torch.manual_seed(step)
        got = find_or_insert_rows_many(multi, ids)
        torch.manual_seed(step)
        want = [impl.find_or_insert_rows(x, distinct=True) for impl, x in zip(single, ids)]
        for a, b, impl in zip(got, want, multi):
            assert torch.equal(a, b), (step, impl.name)
        _assert_tables_equal(multi, single)
        if step % 3 == 1:       # evictions: freed rows are handed out again by the next inserts
            for impl in (multi[6], single[6]):
                impl.delete(ids[6][::4])
        if step % 2 == 1:
            ca, cb = multi[4].take_changes(), single[4].take_changes()
            assert torch.equal(ca.ids, cb.ids) and torch.equal(ca.deleted, cb.deleted)
            assert all(torch.equal(ca.values[s], cb.values[s]) for s in ca.values)
    # every in-memory table in the first fused call of each step (the file-backed one never); the
    # maps that had to grow first were grown (IdMap.grow_for_batch, as find_or_insert grows
    # them: every map grew on the way) and taken by a second call; the U(low, high) tables' new
    # rows were written by one call per step (besides one check of each table's promise on a
    # few ids, the first time: calls of one table)
    calls, steps, grown = iter(fused_calls), 0, 0
    for first in calls:
        assert len(first) == 7
        steps += 1
        if 0 in first:
            second = next(calls)
            assert len(second) == first.count(0) and all(second)
            grown += len(second)
    assert steps == 8 and grown > 0 and fused_calls[-1] == [1] * 7
    assert all(impl.id_map.num_rehashes > 0 for impl in multi)
    assert [c for c in uniform_calls if c > 1] == [4] * 6     # the growing steps
    assert multi[6].evicted_total > 0


def test_a_batch_the_map_inserts_in_chunks_and_a_table_given_twice_fall_back(tmp_path, monkeypatch):
    fused_calls = []
    real_many = table_module.find_or_insert_many

    def spy(states, ids):
        got = real_many(states, ids)
        fused_calls.append((len(states), [c[0] for c in got[3]]))
        return got
    monkeypatch.setattr(table_module, "find_or_insert_many", spy)
    multi, single = _impls(tmp_path, "multi")[:2], _impls(tmp_path, "single")[:2]
    for impl in multi + single:
        impl.id_map.reserve(160_000)                         # 300k slots, load limit 240k
        impl.find_or_insert_rows(torch.arange(230_000))      # room for 10k more ids
    chunked = torch.arange(10**6, 10**6 + 40_000)            # more new ids than the room: chunks
    ids = [chunked, torch.arange(229_990, 230_010)]
    got = find_or_insert_rows_many(multi, ids)
    want = [impl.find_or_insert_rows(x, distinct=True) for impl, x in zip(single, ids)]
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    _assert_tables_equal(multi, single)
    # both maps in the call; the first one left to IdMap.find_or_insert (chunks), the second done
    assert fused_calls == [(2, [0, 1])]
    # the same table twice: both lists take the per-table insert, one after the other
    twice = [torch.tensor([1, 2, 10**7]), torch.tensor([10**7, 10**7 + 1])]
    got = find_or_insert_rows_many([multi[1], multi[1]], twice)
    want = [single[1].find_or_insert_rows(x, distinct=True) for x in twice]
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    _assert_tables_equal(multi, single)
    assert fused_calls == [(2, [0, 1])]     # no second fused call


def test_known_ids_near_the_load_limit_insert_nothing(tmp_path):
    multi, single = _impls(tmp_path, "multi")[:1], _impls(tmp_path, "single")[:1]
    for impl in multi + single:
        impl.find_or_insert_rows(torch.arange(12))       # 16 slots: 12 ids is at the 0.8 limit
    table, meta, free, limit = multi[0].id_map.insert_state()
    assert int(meta[0]) + 12 > limit        # the batch alone would pass the load limit
    got = find_or_insert_rows_many(multi, [torch.arange(12).flip(0)])
    assert torch.equal(got[0], single[0].find_or_insert_rows(torch.arange(12).flip(0), distinct=True))
    _assert_tables_equal(multi, single)


def test_a_wrong_uniform_promise_is_refused_naming_the_table(tmp_path):
    liar = DynamicTableImpl("liar", DIM, torch.float32, "cpu", None, 7, ChildrenInfo(["liar"], False, "liar"),
                            init_rows=UniformIdInit(_uniform_fn(-0.1, 0.1, 11), lambda: (-0.1, 0.1, 12)))
    honest = _impls(tmp_path, "x")[0]
    with pytest.raises(RuntimeError, match=r"table 'liar': init_rows.uniform_params\(\) = \(-0.1, 0.1, 12\) promises"):
        find_or_insert_rows_many([honest, liar], [torch.tensor([1, 2]), torch.tensor([3])])
    assert len(honest) == 0 and len(liar) == 0     # raised before any map changed


def _uniform_engine(opts):
    """The engine with every UniformInitializer table's init_rows a UniformIdInit (what
    nn/modules/hashtable.py would pass: the same values, written by the multi-table call)."""
    eng = EmbeddingEngine(opts())
    for m in eng.modules():
        if isinstance(m, HashTable) and type(m._initializer) is UniformInitializer:
            impl, init = m._table.impl, m._initializer
            impl.init_rows = UniformIdInit(impl.init_rows, lambda m=m, i=init: (i.a, i.b, int(m._init_seed)))
    return eng


def test_engine_runs_with_uniform_tables_are_bit_equal_to_a_lookup_per_group(monkeypatch):
    uniform_calls = []
    real_uniform = table_module.counter_uniform_rows_many_
    monkeypatch.setattr(table_module, "counter_uniform_rows_many_",
                        lambda tables, *a: uniform_calls.append(len(tables)) or real_uniform(tables, *a))
    adamw = lambda p: SparseAdamW(p, lr=0.05)   # noqa: E731
    new = train_engine(lambda: _uniform_engine(_options), adamw, _batch, 4)
    old = train_engine(lambda: PerGroupEngine(_options()), adamw, _batch, 4)
    _assert_same(new, old)
    assert uniform_calls and max(uniform_calls) == 2     # d8 and d8b: one call for both


def _dyn_tables():
    from recis_compat.backend.dynamic_table import DynamicTable, DynamicTableConfig
    out = []
    for k in range(3):
        cfg = DynamicTableConfig(name=f"dyn{k}", embedding_dim=DIM, sample_rows=None, block_size=5,
                                 init_rows=UniformIdInit(_uniform_fn(-0.2, 0.2, k), lambda k=k: (-0.2, 0.2, k)))
        out.append(DynamicTable(cfg))
    return out


def test_lookup_rows_many_equals_lookup_rows_per_table_with_readonly_eval_and_listeners():
    """DynamicTable.lookup_rows_many (what EmbeddingEngine.lookup_run calls): a read-only lookup
    finds without inserting, eval mode finds only, listeners see each table's rows."""
    from recis_compat.backend.dynamic_table import DynamicTable
    multi, single = _dyn_tables(), _dyn_tables()
    seen = {"multi": [], "single": []}
    for tag, tables in (("multi", multi), ("single", single)):
        tables[2].impl.lookup_listeners.append(lambda rows, tag=tag: seen[tag].append(rows.clone()))
    for step, (training, readonly) in enumerate([(True, [False, True, False]), (True, [False, False, False]),
                                                 (False, [False, False, False])]):
        for t in multi + single:
            t.train(training)
        ids = [torch.arange(step * 7, step * 7 + 12) for _ in range(3)]
        got = DynamicTable.lookup_rows_many(multi, ids, readonly)
        want = [t.lookup_rows(x, ro) for t, x, ro in zip(single, ids, readonly)]
        assert all(torch.equal(a, b) for a, b in zip(got, want)), step
        _assert_tables_equal([t.impl for t in multi], [t.impl for t in single])
    assert len(multi[1].impl) == 12 and len(seen["multi"]) == 2      # read-only step 0 inserted nothing
    assert all(torch.equal(a, b) for a, b in zip(seen["multi"], seen["single"]))
    assert bool((got[0] < 0).any())        # eval: unknown ids are absent, not inserted
