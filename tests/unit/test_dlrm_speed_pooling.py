"""The DLRM train-speed work (issue 15 item 4) on EmbeddingEngine and examples/dlrm, each against
the code it replaced, over several training steps, bit for bit:

* groups of different physical tables that pool alike are pooled in one call (values the features
  get and rows the tables end up with equal pooling every group on its own), for every combiner;
* tables that are not sharded are looked up without the staged LookupRequest;
* examples/dlrm's interaction stacks the bottom output and the fields in one copy."""
import importlib
import sys
from pathlib import Path

import pytest
import torch

from recis.nn import EmbeddingEngine, EmbeddingOption
from recis.nn.initializers import NormalInitializer, UniformInitializer
from recis.nn.modules.hashtable import HashtableRegister, filter_out_sparse_param
from recis.optim import SparseAdamW
from recis.ragged.tensor import RaggedTensor
from recis_compat.nn.modules import embedding_engine as engine_module

from engine_train_helpers import train_engine

B = 6


def _normal(seed):
    return NormalInitializer(std=0.5, generator=torch.Generator().manual_seed(seed))


def _options():
    """Twelve features over eleven physical tables (one initializer each, except f1/f1b: one
    table, two children). Pool keys: unweighted sum (dims 4; five tables), unweighted mean (two), weighted
    sum (two), plus groups pooled alone: weighted mean, tile, a dim-8 sum."""
    def o(shared, seed, combiner="sum", dim=4, **kw):
        return EmbeddingOption(embedding_dim=dim, shared_name=shared, combiner=combiner, initializer=_normal(seed),
                               **kw)
    return {
        "f1": o("s1", 1), "f1b": o("s1b", 1), "f2": o("s2", 2), "f3": o("s3", 3), "dense_ids": o("s4", 4),
        "m1": o("m1", 11, "mean", use_weight=False), "m2": o("m2", 12, "mean", use_weight=False),
        "w1": o("w1", 21), "w2": o("w2", 22),
        "wm": o("wm", 31, "mean"),
        "t": o("t", 41, "tile", combiner_kwargs={"tile_len": 3}),
        "d8": EmbeddingOption(embedding_dim=8, shared_name="d8", combiner="sum",
                              initializer=UniformInitializer(-0.3, 0.3)),
    }


def _ragged(gen, vocab, weighted=False, empty_rows=(1,)):
    lengths = torch.randint(1, 4, (B,), generator=gen)
    for r in empty_rows:
        lengths[r] = 0
    vals = torch.randint(0, vocab, (int(lengths.sum()),), generator=gen, dtype=torch.int64)
    off = torch.cat([torch.zeros(1, dtype=torch.int32), lengths.cumsum(0).to(torch.int32)])
    w = torch.rand(vals.numel(), generator=gen) * 2 if weighted else None
    return RaggedTensor(vals, off, weight=w)


def _batch(step):
    gen = torch.Generator().manual_seed(100 + step)
    out = {}
    for name in ("f1", "f1b", "f2", "f3", "m1", "m2", "t", "d8"):
        out[name] = _ragged(gen, 9)
    for name in ("w1", "w2", "wm"):
        out[name] = _ragged(gen, 9, weighted=True)
    out["dense_ids"] = torch.randint(0, 9, (B, 2), generator=gen, dtype=torch.int64)
    out["label"] = torch.rand(B, 1, generator=gen)
    return out


class PerGroupEngine(EmbeddingEngine):
    """The engine as it pooled before: one ``group_reduce`` per group."""

    def reduce_groups(self, ctx):
        out = {}
        for ht_name, group, _, emb_result in ctx.groups:
            out.update(self.split_group_embs(group, self.group_reduce(ht_name, group, emb_result)))
        return out


def _train(engine_cls, steps=3):
    return train_engine(lambda: engine_cls(_options()), lambda p: SparseAdamW(p, lr=0.05), _batch, steps)


def test_merged_pooling_is_bit_equal_to_per_group_pooling_over_training_steps():
    new_outs, new_tables = _train(EmbeddingEngine)
    old_outs, old_tables = _train(PerGroupEngine)
    assert len(new_tables) == 11              # twelve features, f1/f1b share one table
    for step, (a, b) in enumerate(zip(new_outs, old_outs)):
        assert list(a) == list(b)
        for k in a:
            assert a[k].shape == b[k].shape and torch.equal(a[k], b[k]), f"step {step}, feature {k}"
    assert new_tables.keys() == old_tables.keys()
    for name in new_tables:
        assert torch.equal(new_tables[name][0], old_tables[name][0]), name
        assert torch.equal(new_tables[name][1], old_tables[name][1]), name


def test_one_pooling_call_per_pool_key(monkeypatch):
    """Nine sum/mean groups of five pool keys: sum (f1+f1b in one table, f2, f3, dense_ids: four
    tables -> one call), mean (two tables -> one), weighted sum (two -> one), weighted mean
    (alone), dim 8 (alone); tile pools through its own op."""
    calls = []
    real = engine_module.ragged_embedding_segment_reduce

    def counting(emb, weight, reverse, offsets, combiner, *args):
        calls.append((combiner, weight is not None, emb.shape[1], offsets.numel() - 1))
        return real(emb, weight, reverse, offsets, combiner, *args)

    monkeypatch.setattr(engine_module, "ragged_embedding_segment_reduce", counting)
    eng = EmbeddingEngine(_options())
    out = eng(_batch(0))
    assert sorted(calls) == sorted([("sum", False, 4, 4 * B + B), ("mean", False, 4, 2 * B),
                                    ("sum", True, 4, 2 * B), ("mean", True, 4, B), ("sum", False, 8, B)])
    assert out["t"].shape == (B, 3, 4) and out["dense_ids"].shape == (B, 4) and out["d8"].shape == (B, 8)


def test_merged_outputs_are_contiguous_row_slices():
    eng = EmbeddingEngine(_options())
    out = eng(_batch(1))
    for k in ("f1", "f2", "f3", "dense_ids", "m1", "w1"):
        assert out[k].is_contiguous() and out[k].shape == (B, 4)


def test_missing_ids_stay_zero_in_a_merged_call():
    """ReadOnly lookups of unknown ids give zero rows in every table of a merged call."""
    from recis.nn.hashtable_hook import AdmitHook
    opts = {f"r{i}": EmbeddingOption(embedding_dim=4, shared_name=f"r{i}", combiner="sum",
                                     initializer=_normal(50 + i), admit_hook=AdmitHook("ReadOnly"))
            for i in range(3)}
    eng = EmbeddingEngine(opts)
    out = eng({k: torch.tensor([[1, 2], [3, 4]]) for k in opts})
    for k in opts:
        assert torch.equal(out[k], torch.zeros(2, 4))


# ----------------------------------------------------------------------------- examples/dlrm
def _dlrm_model_module():
    path = Path(__file__).resolve().parents[2] / "examples" / "dlrm"
    sys.path.insert(0, str(path))
    try:
        for n in ("dlrm_model", "dlrm_data"):
            sys.modules.pop(n, None)
        return importlib.import_module("dlrm_model")
    finally:
        sys.path.remove(str(path))
        for n in ("dlrm_model", "dlrm_data"):
            sys.modules.pop(n, None)


@pytest.mark.parametrize("itself,padding", [(False, False), (True, True)])
def test_dlrm_interaction_of_a_field_list_equals_the_stacked_tensor(itself, padding):
    DI = _dlrm_model_module().DotInteraction(8, 5, itself=itself, padding=padding)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(7, 8, generator=gen)
    fields = [torch.randn(7, 8, generator=gen) for _ in range(5)]
    g = torch.randn(7, DI.output_size, generator=gen)
    grads = []
    outs = []
    for as_list in (True, False):
        xs = x.clone().requires_grad_()
        fs = [f.clone().requires_grad_() for f in fields]
        out = DI(xs, fs if as_list else torch.stack(fs, 1))
        out.backward(g)
        outs.append(out.detach())
        grads.append([xs.grad] + [f.grad for f in fs])
    assert torch.equal(outs[0], outs[1])
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_a_group_without_ids_in_a_merged_call():
    """A table whose bags are all empty this batch (no rows) between two that have ids: its
    features are zeros and the others equal their per-group pooling."""
    def batch():
        gen = torch.Generator().manual_seed(9)
        out = _batch(2)
        out["f2"] = _ragged(gen, 9, empty_rows=range(B))
        return out
    outs = []
    for cls in (EmbeddingEngine, PerGroupEngine):
        HashtableRegister().clear()
        torch.manual_seed(0)
        outs.append(cls(_options())(batch()))
    assert torch.equal(outs[0]["f2"], torch.zeros(B, 4))
    for k in outs[1]:
        assert torch.equal(outs[0][k], outs[1][k]), k


# ----------------------------------------------------------------------------- local tables
class StagedEngine(EmbeddingEngine):
    """The engine as it looked tables up before: every table through DynamicEmbedding's staged
    lookup (LookupRequest), sharded or not."""

    def group_exchange_ids(self, ht_name, group):
        return self._ht[ht_name].exchange_ids(group.coalesced_ids, group.coalesced_offsets)

    def group_exchange_embs(self, ht_name, group, ids_result):
        return self._ht[ht_name].lookup_exchange_emb(ids_result, group.admit_hook)


def test_local_tables_skip_the_staged_request_with_the_same_training(monkeypatch):
    """Tables that are not sharded are looked up without a LookupRequest; outputs over three
    training steps, the ids inserted and the rows trained are bit-equal to the staged path."""
    from recis_compat.backend.dynamic_table import DynamicTable
    requests = []
    real = DynamicTable.request
    monkeypatch.setattr(DynamicTable, "request", lambda self, *a, **k: requests.append(self.name) or real(self, *a, **k))
    new_outs, new_tables = _train(EmbeddingEngine)
    assert requests == []
    old_outs, old_tables = _train(StagedEngine)
    assert len(requests) == 3 * 11
    for step, (a, b) in enumerate(zip(new_outs, old_outs)):
        for k in b:
            assert torch.equal(a[k], b[k]), f"step {step}, feature {k}"
    for name in old_tables:
        assert torch.equal(new_tables[name][0], old_tables[name][0]), name
        assert torch.equal(new_tables[name][1], old_tables[name][1]), name


def test_local_readonly_and_eval_lookups_insert_nothing():
    from recis.nn.hashtable_hook import AdmitHook
    opts = {"ro": EmbeddingOption(embedding_dim=4, shared_name="ro", combiner="sum", initializer=_normal(60),
                                  admit_hook=AdmitHook("ReadOnly")),
            "rw": EmbeddingOption(embedding_dim=4, shared_name="rw", combiner="sum", initializer=_normal(61))}
    eng = EmbeddingEngine(opts)
    ids = torch.tensor([[1, 2], [3, 3]])
    eng.eval()
    out = eng({"ro": ids, "rw": ids})
    assert torch.equal(out["rw"], torch.zeros(2, 4)) and torch.equal(out["ro"], torch.zeros(2, 4))
    assert all(len(impl.ids_map()[0]) == 0 for impl in filter_out_sparse_param(eng).values())
    eng.train()
    out = eng({"ro": ids, "rw": ids})
    sizes = {impl.children_info().children()[0]: len(impl.ids_map()[0]) for impl in filter_out_sparse_param(eng).values()}
    assert sizes == {"ro": 0, "rw": 3}
    assert torch.equal(out["ro"], torch.zeros(2, 4)) and not torch.equal(out["rw"], torch.zeros(2, 4))


def test_a_bad_admit_hook_is_refused_on_a_local_table():
    from recis.nn.hashtable_hook import AdmitHook
    eng = EmbeddingEngine({"a": EmbeddingOption(embedding_dim=4, shared_name="a", initializer=_normal(62),
                                                admit_hook=AdmitHook("ReadOnly"))})
    for per_table in eng._runtime_groups.values():
        for group in per_table.values():
            group.admit_hook = "not a hook"
    with pytest.raises(AssertionError, match="only AdmitHook"):
        eng({"a": torch.tensor([[1]])})


@pytest.mark.parametrize("fp16", [True, False])
def test_int8_tables_pool_merged_in_their_compute_dtype(fp16):
    """Two int8 tables (different initializers) pool in one call in float16 / float32, as each
    would alone; ids they do not hold give zeros and are not inserted (int8 tables are read-only)."""
    from recis.nn.initializers import ConstantInitializer
    opts = {f"q{i}": EmbeddingOption(embedding_dim=4, shared_name=f"q{i}", combiner="sum", dtype=torch.int8,
                                     fp16_enabled=fp16, initializer=ConstantInitializer(init_val=i))
            for i in range(2)}
    eng = EmbeddingEngine(opts)
    impls = filter_out_sparse_param(eng)
    assert len(impls) == 2
    for i, name in enumerate(opts):
        impl = impls[eng.table_of(name)]
        impl.insert(eng.table_ids(name, torch.tensor([1, 2])),
                    torch.tensor([[1, 2, 3, 4], [10, 20, 30, 40]], dtype=torch.int8) * (i + 1))
    out = eng({name: torch.tensor([[1, 2], [2, 3]]) for name in opts})
    for i, name in enumerate(opts):
        assert out[name].dtype == (torch.float16 if fp16 else torch.float32)
        assert out[name].tolist() == [[11 * (i + 1), 22 * (i + 1), 33 * (i + 1), 44 * (i + 1)],
                                      [10 * (i + 1), 20 * (i + 1), 30 * (i + 1), 40 * (i + 1)]]
    assert all(len(impl) == 2 for impl in impls.values())
