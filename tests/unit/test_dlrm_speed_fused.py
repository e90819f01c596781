"""The DLRM train-speed work, second round (issue 15 item 4), each piece against the code it
replaced over several training steps, bit for bit:

* EmbeddingEngine looks a run of consecutive groups of unsharded in-memory tables up by one
  gather and one autograd node (``lookup_run``), and dedupes the groups of unsharded tables in one
  call (``local_partitions``): outputs, ids inserted and rows trained equal a lookup per group;
* examples/dlrm's SparseSGD updates all tables in one call (``sgd_rows_``): rows equal the
  per-table index_select / add_ / index_copy_ update."""
import importlib
import sys
import threading
from pathlib import Path

import pytest
import torch

from recis.nn import EmbeddingEngine, EmbeddingOption
from recis.nn.hashtable_hook import AdmitHook
from recis.nn.initializers import NormalInitializer, UniformInitializer
from recis.nn.modules.hashtable import HashtableRegister, filter_out_sparse_param
from recis.optim import SparseAdamW
from recis.ragged.tensor import RaggedTensor
from recis_compat.nn.modules import embedding_engine as engine_module

from engine_train_helpers import train_engine

B = 6
DLRM_DIR = Path(__file__).resolve().parents[2] / "examples" / "dlrm"


def _normal(seed):
    return NormalInitializer(std=0.5, generator=torch.Generator().manual_seed(seed))


def _options():
    """Eleven tables: runs of sum tables (dim 4; one holds two children), a mean and a weighted
    group between them, a read-only table (its unknown ids give zeros), a dim-8 table drawing its
    initial rows from the global generator, a tile table."""
    def o(shared, seed, combiner="sum", dim=4, **kw):
        return EmbeddingOption(embedding_dim=dim, shared_name=shared, combiner=combiner, initializer=_normal(seed),
                               **kw)
    return {
        "f1": o("s1", 1), "f1b": o("s1b", 1), "f2": o("s2", 2), "f3": o("s3", 3), "dense_ids": o("s4", 4),
        "m1": o("m1", 11, "mean", use_weight=False), "w1": o("w1", 21), "wm": o("wm", 31, "mean"),
        "ro": o("ro", 41, admit_hook=AdmitHook("ReadOnly")),
        "t": o("t", 51, "tile", combiner_kwargs={"tile_len": 3}),
        "d8": EmbeddingOption(embedding_dim=8, shared_name="d8", combiner="sum",
                              initializer=UniformInitializer(-0.3, 0.3)),
        "d8b": EmbeddingOption(embedding_dim=8, shared_name="d8b", combiner="sum",
                               initializer=UniformInitializer(-0.2, 0.2)),
    }


def _ragged(gen, vocab, weighted=False):
    lengths = torch.randint(0, 4, (B,), generator=gen)
    vals = torch.randint(0, vocab, (int(lengths.sum()),), generator=gen, dtype=torch.int64)
    off = torch.cat([torch.zeros(1, dtype=torch.int32), lengths.cumsum(0).to(torch.int32)])
    w = torch.rand(vals.numel(), generator=gen) * 2 if weighted else None
    return RaggedTensor(vals, off, weight=w)


def _batch(step):
    gen = torch.Generator().manual_seed(100 + step)
    out = {name: _ragged(gen, 9 + step) for name in ("f1", "f1b", "f2", "f3", "m1", "ro", "t", "d8", "d8b")}
    for name in ("w1", "wm"):
        out[name] = _ragged(gen, 9, weighted=True)
    out["dense_ids"] = torch.randint(0, 9, (B, 2), generator=gen, dtype=torch.int64)
    out["label"] = torch.rand(B, 1, generator=gen)
    return out


class PerGroupEngine(EmbeddingEngine):
    """The engine as it looked up before: one lookup and one dedupe per group."""

    def local_runs(self, ctx):
        return []

    def local_partitions(self, ctx):
        return {}


def _train(engine_cls, make_opt, steps=4, opts=_options):
    return train_engine(lambda: engine_cls(opts()), make_opt, _batch, steps)


def _assert_same(new, old):
    (new_outs, new_tables), (old_outs, old_tables) = new, old
    for step, (a, b) in enumerate(zip(new_outs, old_outs)):
        assert list(a) == list(b)
        for k in a:
            assert a[k].shape == b[k].shape and torch.equal(a[k], b[k]), f"step {step}, feature {k}"
    assert new_tables.keys() == old_tables.keys()
    for name in new_tables:
        assert torch.equal(new_tables[name][0], old_tables[name][0]), name
        assert torch.equal(new_tables[name][1], old_tables[name][1]), name


def _dlrm_optimizers():
    sys.path.insert(0, str(DLRM_DIR))
    try:
        return importlib.import_module("sparse_optimizers")
    finally:
        sys.path.remove(str(DLRM_DIR))
        sys.modules.pop("sparse_optimizers", None)


@pytest.mark.parametrize("world", [1, 2])
def test_runs_are_bit_equal_to_a_lookup_per_group(monkeypatch, world):
    """world 2 (WORLD_SIZE, unsharded): grad_reduce_by='worker' scales every table's gradient
    by 1/2 in the run's backward, as in each per-group one."""
    monkeypatch.setenv("WORLD_SIZE", str(world))
    adamw = lambda p: SparseAdamW(p, lr=0.05)   # noqa: E731
    _assert_same(_train(EmbeddingEngine, adamw), _train(PerGroupEngine, adamw))


def test_the_runs_are_looked_up_by_one_gather_each(monkeypatch):
    """Eleven groups in table order: s1 (f1 and f1b, two children of one table), s2, s3, s4,
    m1, w1, wm, ro, t (dim 4: one run, whatever their combiners), d8, d8b (dim 8: a second run);
    every group is deduped by the one multi-list call."""
    runs, uniques = [], []
    real_gather = engine_module.lookup_tables_with_grad
    real_parts = engine_module.partition_ids_many
    monkeypatch.setattr(engine_module, "lookup_tables_with_grad",
                        lambda impls, *a, **k: runs.append(len(impls)) or real_gather(impls, *a, **k))
    monkeypatch.setattr(engine_module, "partition_ids_many",
                        lambda tables, ids: uniques.append(len(tables)) or real_parts(tables, ids))
    eng = EmbeddingEngine(_options())
    eng.train()
    eng(_batch(0))
    assert sorted(runs) == [2, 9] and uniques == [11]


def test_sparse_sgd_in_one_call_is_bit_equal_to_the_per_table_update():
    so = _dlrm_optimizers()

    class PerTableSGD(so.SparseSGD):
        @torch.no_grad()
        def _apply(self, lr):
            for table in self._tables.values():
                if table.read_only:
                    continue
                with table.lock:
                    got = table.grad_rows(self._grad_accum_steps)
                    if got is None:
                        continue
                    rows, grad = got
                    emb = table.embedding
                    emb.index_copy_(0, rows, emb.index_select(0, rows).add_(grad.to(emb.dtype), alpha=-lr))

    calls = []
    real = so.sgd_rows_
    so.sgd_rows_ = lambda *a: calls.append(len(a[0])) or real(*a)
    new = _train(EmbeddingEngine, lambda p: so.SparseSGD(p, lr=0.3))
    assert calls and calls[0] == 10           # every table with gradients (not 'ro': it holds no id), one call
    _assert_same(new, _train(PerGroupEngine, lambda p: PerTableSGD(p, lr=0.3)))


def test_sparse_sgd_with_accumulation_and_no_gradients():
    """Gradient accumulation divides as before; a step with no gradient changes no row."""
    so = _dlrm_optimizers()
    HashtableRegister().clear()
    eng = EmbeddingEngine({"a": EmbeddingOption(embedding_dim=2, shared_name="a", initializer=_normal(1)),
                           "b": EmbeddingOption(embedding_dim=2, shared_name="b", initializer=_normal(2))})
    eng.train()
    opt = so.SparseSGD(filter_out_sparse_param(eng), lr=1.0)
    opt.set_grad_accum_steps(2)
    ids = {"a": torch.tensor([[1]]), "b": torch.tensor([[1]])}
    before = {k: v.embedding.clone() for k, v in filter_out_sparse_param(eng).items()}
    opt.step()                                # no gradient, not a boundary
    opt.step()                                # a boundary with no gradient
    assert all(torch.equal(v.embedding, before[k]) for k, v in filter_out_sparse_param(eng).items())
    for _ in range(2):
        out = eng(ids)
        (out["a"].sum() + 2 * out["b"].sum()).backward()
        opt.step()
        opt.zero_grad()
    impls = filter_out_sparse_param(eng)
    for name, scale in (("a", 1.0), ("b", 2.0)):
        impl = impls[eng.table_of(name)]
        row = impl.find_rows(eng.table_ids(name, torch.tensor([1])))
        start = before[eng.table_of(name)] if before[eng.table_of(name)].shape[0] else None
        got = impl.embedding[row]
        # two micro-steps of gradient `scale` per element, divided by 2 accumulation steps, lr 1
        init = impl.init_rows(eng.table_ids(name, torch.tensor([1]))) if start is None else start[row]
        assert torch.equal(got, init - scale)


def test_concurrent_forwards_over_runs_neither_deadlock_nor_lose_rows():
    """Forwards in several threads over the same engine (the run's locks are taken in group
    order) and an optimizer step: every id of every thread ends up in its table."""
    so = _dlrm_optimizers()
    HashtableRegister().clear()
    opts = {f"c{i}": EmbeddingOption(embedding_dim=4, shared_name=f"c{i}", initializer=_normal(i)) for i in range(6)}
    eng = EmbeddingEngine(opts)
    eng.train()
    opt = so.SparseSGD(filter_out_sparse_param(eng), lr=0.1)
    errors = []

    def work(t):
        try:
            for step in range(20):
                ids = torch.arange(t * 1000 + step * 10, t * 1000 + step * 10 + 10).reshape(5, 2)
                out = eng({k: ids for k in opts})
                sum(v.sum() for v in out.values()).backward()
                opt.step()
        except Exception as e:  # noqa: BLE001 -- reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads), "a forward deadlocked"
    assert not errors, errors
    for impl in filter_out_sparse_param(eng).values():
        assert len(impl) == 3 * 20 * 10


def test_accept_grad_present_skips_only_the_absent_row_check():
    """``present=True`` (rows of an inserting lookup) buffers the rows as given; without it rows
    ``< 0`` are dropped, as before."""
    from recis_compat.backend.children import ChildrenInfo
    from recis_compat.backend.table_impl import DynamicTableImpl
    impl = DynamicTableImpl("t", 2, torch.float32, "cpu", lambda k: torch.zeros(k, 2), 16, ChildrenInfo(["t"], False, "t"))
    impl.find_or_insert_rows(torch.tensor([5, 6, 7]))
    impl.accept_grad(torch.tensor([2, 0]), torch.ones(2, 2), unique=True, present=True)
    rows, grad = impl.grad_rows()
    assert rows.tolist() == [2, 0] and torch.equal(grad, torch.ones(2, 2))
    impl.clear_grad()
    impl.accept_grad(torch.tensor([-1, 1]), torch.tensor([[1.0, 1.0], [2.0, 2.0]]), unique=True)
    rows, grad = impl.grad_rows()
    assert rows.tolist() == [1] and grad.tolist() == [[2.0, 2.0]]
