"""recis.nn.HashTable and the helpers of recis.nn.modules.hashtable (RecIS 1.0; see COMPATIBILITY.md).

Deliberate differences tested here (COMPATIBILITY / brief): ``grad()`` is indexed by real rows even
when rows repeat (Q5 fixed); gradients of ids a ReadOnly lookup did not find are dropped (Q23);
new rows are numbered in first-occurrence order.
"""
import gc

import pytest
import torch

from recis.nn import HashTable
from recis.nn.hashtable_hook import AdmitHook
from recis.nn.initializers import ConstantInitializer, Initializer, NormalInitializer
from recis.nn.modules.hashtable import (HashtableRegister, filter_out_sparse_param, gen_slice, is_hashtable,
                                        split_sparse_dense_state_dict)


def row_of(ht, ids):
    """Rows of ``ids`` according to the public ``ids_map()`` (-1 if absent)."""
    m = dict(zip(*(t.tolist() for t in ht.ids_map())))
    return torch.tensor([m.get(int(i), -1) for i in ids], dtype=torch.int64)


def dense_grad(ht, acc_step=1):
    return ht.grad(acc_step).to_dense()


# ------------------------------------------------------------------------------ lookups
def test_training_lookup_inserts_constant_initializer_values():
    ht = HashTable([3], name="t_const", initializer=ConstantInitializer(init_val=0.5))
    out = ht(torch.tensor([7, 3, 7, 9]))
    assert out.shape == (4, 3) and out.dtype == torch.float32
    assert torch.equal(out, torch.full((4, 3), 0.5))
    assert sorted(ht.ids().tolist()) == [3, 7, 9]
    assert len(ht.impl) == 3
    ids, rows = ht.ids_map()
    assert sorted(rows.tolist()) == [0, 1, 2]
    # embeddings() is the whole slot in row order: the looked-up rows are the stored rows
    assert ht.embeddings().shape[1:] == (3,) and ht.embeddings().shape[0] >= 3
    assert torch.equal(ht.embeddings()[rows], torch.full((3, 3), 0.5))


def test_training_lookup_normal_initializer_with_seed_is_reproducible():
    def make(name):
        return HashTable([4], name=name, block_size=8,
                         initializer=NormalInitializer(mean=1.0, std=0.5, generator=torch.Generator().manual_seed(3)))
    a, b = make("t_norm_a"), make("t_norm_b")
    ids = torch.tensor([11, 12, 13, 11])
    oa, ob = a(ids), b(ids)
    assert torch.equal(oa, ob)
    assert torch.equal(oa[0], oa[3])             # same id -> same row
    assert not torch.equal(oa[0], oa[1])         # different rows are different draws
    # the values are the stored rows
    assert torch.equal(oa[:3], a.embeddings()[row_of(a, ids[:3])])
    # a second lookup returns the same values (nothing re-drawn)
    assert torch.equal(a(ids), oa)
    # the values look like N(1, 0.5) (8 x 4 block values; loose bound)
    assert 0.3 < float(a.embeddings().mean()) < 1.7


def test_new_rows_are_numbered_in_first_occurrence_order():
    """Deliberate difference from RecIS (descending order inside a batch): new ids of a lookup
    get rows in the order of their first occurrence, after the rows already handed out."""
    ht = HashTable([2], name="t_order")
    ht(torch.tensor([7, 3, 7, 9]))
    assert row_of(ht, [7, 3, 9]).tolist() == [0, 1, 2]
    ht(torch.tensor([9, 5, 1]))
    assert row_of(ht, [5, 1]).tolist() == [3, 4]


def test_impl_find_or_insert_rows_first_occurrence_order():
    ht = HashTable([2], name="t_order_impl")
    rows = ht.impl.find_or_insert_rows(torch.tensor([7, 3, 7, 9]))
    assert rows.tolist() == [0, 1, 0, 2]
    assert ht.impl.find_rows(torch.tensor([9, 4])).tolist() == [2, -1]


def test_eval_lookup_returns_zeros_and_inserts_nothing():
    ht = HashTable([2], name="t_eval", initializer=ConstantInitializer(init_val=1.5))
    ht(torch.tensor([1, 2]))
    ids_before = ht.ids().clone()
    ht.eval()
    out = ht(torch.tensor([1, 100, 2, 101]))
    assert out.tolist() == [[1.5, 1.5], [0, 0], [1.5, 1.5], [0, 0]]
    assert not out.requires_grad
    assert len(ht.impl) == 2 and torch.equal(ht.ids(), ids_before)


def test_eval_lookup_on_a_fresh_table_returns_zeros():
    """Contract: a read-only lookup on an empty table gives zero vectors (RecIS even allocates a
    block); e.g. evaluating a model before its first training step."""
    ht = HashTable([2], name="t_eval_fresh")
    ht.eval()
    out = ht(torch.tensor([1, 2]))
    assert torch.equal(out, torch.zeros(2, 2))
    assert len(ht.impl) == 0


def test_readonly_admit_hook_in_training_returns_zeros_and_drops_missing_grads():
    ht = HashTable([2], name="t_ro", initializer=ConstantInitializer(init_val=2.0))
    ht(torch.tensor([1]))
    ht.clear_grad()
    out = ht(torch.tensor([1, 50, 1]), admit_hook=AdmitHook("ReadOnly"))
    assert out.tolist() == [[2, 2], [0, 0], [2, 2]]
    assert ht.ids().tolist() == [1] and len(ht.impl) == 1
    (out * torch.tensor([[1.0], [10.0], [100.0]])).sum().backward()
    g = ht.grad()
    # only the found id's row gets a gradient (Q23: the missing id's is dropped)
    assert g._indices().tolist() == [[0]]
    assert g._values().tolist() == [[101.0, 101.0]]


def test_readonly_admit_hook_on_fresh_table():
    ht = HashTable([2], name="t_ro_fresh")
    out = ht(torch.tensor([4, 5]), admit_hook=AdmitHook("ReadOnly"))
    assert torch.equal(out, torch.zeros(2, 2)) and len(ht.impl) == 0


def test_only_readonly_admit_hook_and_int64_ids():
    ht = HashTable([2], name="t_bad_args")
    with pytest.raises(AssertionError):
        ht(torch.tensor([1]), admit_hook="ReadOnly")
    with pytest.raises(TypeError, match="t_bad_args"):
        ht(torch.tensor([1], dtype=torch.int32))
    with pytest.raises(TypeError, match="t_bad_args"):
        ht(torch.tensor([1.0]))


def test_int8_table_lookup_before_any_insert_gives_zeros():
    ht = HashTable([2], name="t_i8_fresh", dtype=torch.int8)
    out = ht(torch.tensor([1, 2]))
    assert out.dtype == torch.int8 and torch.equal(out, torch.zeros(2, 2, dtype=torch.int8))
    assert len(ht.impl) == 0


def test_int8_table_is_read_only_and_insert_upserts():
    ht = HashTable([2], name="t_i8", dtype=torch.int8)
    ht.insert(torch.tensor([1, 2]), torch.tensor([[1, 2], [3, 4]], dtype=torch.int8))
    assert ht(torch.tensor([2, 3, 1])).tolist() == [[3, 4], [0, 0], [1, 2]]
    assert len(ht.impl) == 2                       # id 3 was not inserted by the lookup
    ht.insert(torch.tensor([1]), torch.tensor([[9, 9]], dtype=torch.int8))     # upsert
    assert ht(torch.tensor([1, 2])).tolist() == [[9, 9], [3, 4]]
    assert len(ht.impl) == 2
    with pytest.raises(TypeError):
        ht.insert(torch.tensor([5]), torch.tensor([[1.0, 2.0]]))


def test_multi_dim_embedding_shape():
    """embedding_shape is a list: rows are ``[*embedding_shape]`` (contract: forward returns
    ``[N, *embedding_shape]``)."""
    ht = HashTable([2, 3], name="t_md", initializer=ConstantInitializer(init_val=1.0))
    out = ht(torch.tensor([1, 2, 1]))
    assert out.shape == (3, 2, 3) and torch.equal(out, torch.ones(3, 2, 3))
    assert ht.embeddings().shape[1:] == (2, 3)
    vals = torch.arange(6, dtype=torch.float32).view(1, 2, 3)
    ht.insert(torch.tensor([5]), vals)
    assert torch.equal(ht(torch.tensor([5])), vals)
    ht.clear_grad()
    (ht(torch.tensor([5, 5])) * 2).sum().backward()
    g = ht.grad().to_dense().reshape(-1, 2, 3)
    assert torch.equal(g[row_of(ht, [5])[0]], torch.full((2, 3), 4.0))


def test_extreme_and_negative_ids_are_ordinary_keys():
    ht = HashTable([1], name="t_edge_ids")
    special = torch.tensor([0, -1, -2, 2 ** 63 - 1, -2 ** 63, -2 ** 63 + 1, 1], dtype=torch.int64)
    ht.insert(special, torch.arange(7, dtype=torch.float32).view(7, 1))
    assert len(ht.impl) == 7 and sorted(ht.ids().tolist()) == sorted(special.tolist())
    assert ht(special).view(-1).tolist() == list(range(7))
    assert len(ht.impl) == 7
    ht.delete(torch.tensor([-1, -2 ** 63]))
    assert sorted(ht.ids().tolist()) == sorted([0, -2, 2 ** 63 - 1, -2 ** 63 + 1, 1])
    ht.eval()
    assert ht(special).view(-1).tolist() == [0, 0, 2, 3, 0, 5, 6]


# ------------------------------------------------------------------------------ state queries
def test_insert_ids_map_embeddings_clear():
    ht = HashTable([3], name="t_insert", block_size=4, initializer=ConstantInitializer(init_val=-1.0))
    vals = torch.arange(9, dtype=torch.float32).view(3, 3)
    ht.insert(torch.tensor([30, 10, 20]), vals)
    ids, rows = ht.ids_map()
    assert ids.dtype == rows.dtype == torch.int64
    assert sorted(ids.tolist()) == [10, 20, 30] and sorted(ht.ids().tolist()) == [10, 20, 30]
    emb = ht.embeddings()
    assert emb.shape[1:] == (3,) and emb.shape[0] % 4 == 0 and emb.shape[0] >= 3
    for i, v in zip([30, 10, 20], vals):
        assert torch.equal(emb[row_of(ht, [i])[0]], v)
    assert torch.equal(ht(torch.tensor([20, 30])), vals[[2, 0]])
    # unused rows hold zeros (a new id's row gets its initial value when the id is inserted;
    # RecIS fills whole blocks at allocation)
    used = set(rows.tolist())
    unused = [r for r in range(emb.shape[0]) if r not in used]
    assert unused and torch.equal(emb[unused], torch.zeros((len(unused), 3)))
    ht(torch.tensor([40]))
    assert torch.equal(ht(torch.tensor([40])), torch.full((1, 3), -1.0))
    # upsert of an existing id with new values
    ht.insert(torch.tensor([10]), torch.full((1, 3), 5.0))
    assert ht(torch.tensor([10])).tolist() == [[5, 5, 5]] and len(ht.impl) == 4
    with pytest.raises(TypeError):
        ht.insert(torch.tensor([1]), torch.ones(1, 3, dtype=torch.float64))
    ht.clear()
    assert ht.ids().numel() == 0 and len(ht.impl) == 0
    assert ht(torch.tensor([10])).tolist() == [[-1, -1, -1]]     # re-inserted with the initializer value
    assert ht.ids().tolist() == [10]


def test_slot_group_children_info_and_properties():
    ht = HashTable([2], name="t_slots", block_size=3)
    ht(torch.tensor([1, 2]))
    sg = ht.slot_group()
    emb_slot = sg.slot_by_name("embedding")
    assert emb_slot.name() == "embedding" and emb_slot.block_size() == 3 and emb_slot.flat_size() == 2
    assert torch.equal(emb_slot.value(), ht.embeddings())
    assert all(b.shape == (3, 2) for b in emb_slot.values())
    assert [s.name() for s in sg.slots()] == ["embedding"]
    assert sg.slot_by_index(0).name() == "embedding"
    with pytest.raises(KeyError):
        sg.slot_by_name("nope")
    ht.impl.add_slot("sparse_adamw_exp_avg", [2], torch.float32)
    assert "sparse_adamw_exp_avg" in [s.name() for s in ht.slot_group().slots()]
    ci = ht.children_info()
    assert ci.children() == ["t_slots"] and not ci.is_coalesce()
    assert ci.index_bits_num() == 12 and ci.id_bits_num() == 52 and ci.max_children_num() == 4095
    assert ht.children_hashtable == ["t_slots"] and ht.coalesce is False
    assert str(ht) == repr(ht) == "HashTable_t_slots"
    assert ht.device == torch.device("cpu")
    assert isinstance(ht.initializer(), Initializer)
    assert is_hashtable(ht.impl) and not is_hashtable(torch.zeros(1))


def test_constructor_validation():
    with pytest.raises(ValueError):
        HashTable([2], name="t_val1", grad_reduce_by="rank")
    with pytest.raises(TypeError):
        HashTable([2], name="t_val2", initializer="zeros")
    init = ConstantInitializer(init_val=1.0)
    HashTable([2], name="t_val3", initializer=init)
    with pytest.raises(RuntimeError, match="rebuild initializer"):
        HashTable([2], name="t_val4", initializer=init)


# ------------------------------------------------------------------------------ gradients
def test_duplicate_ids_accumulate_gradient_at_row_indices():
    ht = HashTable([2], name="t_grad", initializer=ConstantInitializer(init_val=1.0))
    ht(torch.tensor([100, 200]))                                   # rows exist already
    ht.clear_grad()
    ids = torch.tensor([200, 300, 200, 200, 100])
    out = ht(ids)
    coef = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]).unsqueeze(1)
    (out * coef).sum().backward()
    g = ht.grad()
    assert g.is_sparse and g.shape == ht.embeddings().shape
    rows = row_of(ht, [100, 200, 300])
    expected = torch.zeros_like(ht.embeddings())
    expected[rows[0]] = 5.0
    expected[rows[1]] = 1.0 + 3.0 + 4.0
    expected[rows[2]] = 2.0
    assert torch.equal(g.to_dense(), expected)
    assert sorted(g.coalesce().indices()[0].tolist()) == sorted(rows.tolist())
    assert torch.equal(dense_grad(ht, acc_step=2), expected / 2)


def test_grad_accumulation_over_steps_uses_real_rows():
    """Q5 fixed: with repeated rows across accumulated lookups the indices are rows, not
    positions in a unique list."""
    ht = HashTable([1], name="t_grad_acc")
    ht(torch.tensor([1, 2, 3, 4, 5]))          # rows 0..4 exist
    ht.clear_grad()
    ht(torch.tensor([5])).sum().backward()                       # row of 5
    (ht(torch.tensor([5, 3])) * 2).sum().backward()
    g = ht.grad()
    r5, r3 = row_of(ht, [5, 3]).tolist()
    expected = torch.zeros_like(ht.embeddings())
    expected[r5] = 3.0
    expected[r3] = 2.0
    assert torch.equal(g.to_dense(), expected)
    assert sorted(g.coalesce().indices()[0].tolist()) == sorted([r5, r3])
    assert torch.equal(dense_grad(ht, 2), expected / 2)
    ht.clear_grad()
    assert ht.grad()._nnz() == 0


def test_grad_reduce_by_id_averages_duplicates():
    ht = HashTable([2], name="t_grad_id", grad_reduce_by="id")
    ids = torch.tensor([5, 6, 5, 5])
    out = ht(ids)
    (out * torch.tensor([1.0, 2.0, 3.0, 8.0]).unsqueeze(1)).sum().backward()
    g = dense_grad(ht)
    r5, r6 = row_of(ht, [5, 6]).tolist()
    assert g[r5].tolist() == [4.0, 4.0]            # (1 + 3 + 8) / 3
    assert g[r6].tolist() == [2.0, 2.0]


def test_grad_reduce_by_worker_divides_by_world_size(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    ht = HashTable([1], name="t_grad_worker")
    (ht(torch.tensor([9, 9, 8])) * torch.tensor([[1.0], [3.0], [2.0]])).sum().backward()
    g = dense_grad(ht)
    r9, r8 = row_of(ht, [9, 8]).tolist()
    assert g[r9].item() == pytest.approx(1.0) and g[r8].item() == pytest.approx(0.5)


def test_accept_grad_checks_dtypes():
    ht = HashTable([2], name="t_accept")
    ht(torch.tensor([1, 2]))
    ht.clear_grad()
    ht.accept_grad(torch.tensor([0, 1, 0]), torch.ones(3, 2))
    assert dense_grad(ht)[:2].tolist() == [[2, 2], [1, 1]]
    with pytest.raises(TypeError):
        ht.accept_grad(torch.tensor([0], dtype=torch.int32), torch.ones(1, 2))
    with pytest.raises(TypeError):
        ht.accept_grad(torch.tensor([0]), torch.ones(1, 2, dtype=torch.float64))


def test_grad_size_covers_rows_accepted_past_the_capacity():
    """Issue 12: a fresh table (capacity 0) given a gradient for row 3 returned size (0, 4)
    with index 3, an invalid sparse tensor whose to_dense() raised."""
    ht = HashTable([4], name="t_grad_size")
    ht.accept_grad(torch.tensor([3]), torch.ones(1, 4))
    g = ht.grad()
    assert g.shape == (4, 4)
    dense = g.to_dense()
    assert dense[3].tolist() == [1, 1, 1, 1] and dense[:3].abs().sum().item() == 0
    # RecIS's ht_grad_ga_test shape: three accumulated hand-overs, divided by 3, real rows
    ht.clear_grad()
    for _ in range(3):
        ht.accept_grad(torch.tensor([0, 7, 7]), torch.full((3, 4), 3.0))
    dense = ht.grad(3).coalesce().to_dense()
    assert dense.shape == (8, 4)
    assert dense[0].tolist() == [3.0] * 4 and dense[7].tolist() == [6.0] * 4
    # within the capacity the size stays the capacity
    ht(torch.arange(20))
    ht.clear_grad()
    ht.accept_grad(torch.tensor([1]), torch.ones(1, 4))
    assert ht.grad().shape == (ht.embeddings().shape[0], 4)


def test_recis_private_attributes():
    """Issue 12: RecIS code and tests reach the implementation through ``_hashtable_impl``."""
    ht = HashTable([4], name="t_private", initializer=ConstantInitializer(init_val=0.25))
    impl = ht._hashtable_impl
    assert is_hashtable(impl) and impl is ht.state_dict()["t_private"]
    assert impl is filter_out_sparse_param(ht)["t_private"]
    rows, emb = impl.embedding_lookup(torch.tensor([5, 6]), False)
    assert torch.equal(emb, torch.full((2, 4), 0.25))
    assert sorted(impl.ids().tolist()) == [5, 6]
    assert ht._name == "t_private" and ht._dtype == torch.float32 and ht._device == torch.device("cpu")
    assert ht._grad_reduce_by == "worker" and ht._worker_num == 1
    assert isinstance(ht._initializer, ConstantInitializer)
    assert ht._backward_holder.requires_grad and ht._backward_holder.numel() == 1
    assert isinstance(ht._filter_hook_impl, torch.nn.Identity)
    idx = torch.tensor([1])
    assert ht._filter_hook_impl(idx) is idx      # RecIS calls it unconditionally


def test_deepcopy_and_pickle_give_a_table_with_its_own_lock():
    import copy
    import pickle
    ht = HashTable([2], name="t_copy_lock")
    ht(torch.tensor([1, 2, 3]))
    clone = copy.deepcopy(ht.impl)
    assert clone.lock is not ht.impl.lock
    assert clone.id_map._lock is clone.lock and clone.storage._lock is clone.lock
    assert torch.equal(clone.ids(), ht.ids())
    clone.find_or_insert_rows(torch.tensor([4]))
    assert len(clone) == 4 and len(ht.impl) == 3
    back = pickle.loads(pickle.dumps(ht.impl))
    assert back.id_map._lock is back.lock and torch.equal(back.ids(), ht.ids())


# ------------------------------------------------------------------------------ state dicts
class Model(torch.nn.Module):
    def __init__(self, name="t_model"):
        super().__init__()
        self.dense = torch.nn.Linear(4, 1)
        self.inner = torch.nn.ModuleDict({"emb": HashTable([4], name=name)})

    def forward(self, ids):
        return self.dense(self.inner["emb"](ids))


def test_state_dict_holds_impl_under_bare_name():
    m = Model()
    m(torch.tensor([1, 2]))
    sd = m.state_dict()
    assert "t_model" in sd and sd["t_model"] is m.inner["emb"].impl
    assert not any(k.endswith("t_model") and k != "t_model" for k in sd)
    assert {"dense.weight", "dense.bias"} <= set(sd)


def test_filter_out_sparse_param_stable_across_to():
    m = Model()
    m(torch.tensor([1, 2]))
    before = filter_out_sparse_param(m)
    assert list(before) == ["t_model"] and is_hashtable(before["t_model"])
    m.to("cpu")
    after_dev = filter_out_sparse_param(m)
    m.to(torch.float64)
    after_dtype = filter_out_sparse_param(m)
    assert before["t_model"] is after_dev["t_model"] is after_dtype["t_model"]
    assert m.dense.weight.dtype == torch.float64
    table = m.inner["emb"]
    assert table.embeddings().dtype == torch.float32 and table.impl.dtype == torch.float32
    assert table(torch.tensor([1])).dtype == torch.float32
    with pytest.raises(TypeError):
        filter_out_sparse_param({"not": "a module"})


def test_split_sparse_dense_state_dict_mutates_input():
    m = Model()
    sd = m.state_dict()
    impl = sd["t_model"]
    sparse, dense = split_sparse_dense_state_dict(sd)
    assert dense is sd
    assert list(sparse) == ["t_model"] and sparse["t_model"] is impl
    # the table's init seed buffer is dense state (saved in model.pt)
    assert set(dense) == {"dense.weight", "dense.bias", "inner.emb._init_seed"}
    assert "t_model" not in sd


# ------------------------------------------------------------------------------ registry, slices
def test_duplicate_name_raises_and_is_freed_after_gc():
    ht = HashTable([2], name="t_dup")
    assert "t_dup" in HashtableRegister().names()
    with pytest.raises(ValueError, match="Duplicate hashtable shard name"):
        HashTable([2], name="t_dup")
    with pytest.raises(ValueError, match="Duplicate hashtable shard name"):
        HashTable([2], name="t_other", children=["x_child", "t_dup"])
    # the failed construction above must not leave "x_child" registered
    assert "x_child" not in HashtableRegister().names()
    del ht
    gc.collect()
    assert "t_dup" not in HashtableRegister().names()
    again = HashTable([2], name="t_dup")
    assert again.name == "t_dup"


@pytest.mark.parametrize("shards,expected", [
    (1, [(0, 65536)]),
    (3, [(0, 21846), (21846, 43691), (43691, 65536)]),
    (4, [(0, 16384), (16384, 32768), (32768, 49152), (49152, 65536)]),
])
def test_gen_slice(shards, expected):
    got = [(s.slice_begin, s.slice_end) for s in (gen_slice(i, shards) for i in range(shards))]
    assert got == expected
    assert [e - b for b, e in got] == [65536 // shards + (1 if i < 65536 % shards else 0) for i in range(shards)]
    assert all(gen_slice(i, shards).slice_size == 65536 for i in range(shards))


def test_gen_slice_small_slice_size():
    assert [(s.slice_begin, s.slice_end) for s in (gen_slice(i, 3, 10) for i in range(3))] == [(0, 4), (4, 7), (7, 10)]
    with pytest.raises(ValueError):
        gen_slice(3, 3)
