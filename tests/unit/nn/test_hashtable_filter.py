"""Eviction: FilterHook("GlobalStepFilter") on a HashTable, driven by recis.hooks.HashTableFilterHook (RecIS 1.0; see COMPATIBILITY.md)."""
import pytest
import torch

from recis.hooks import HashTableFilterHook
from recis.nn import HashTable
from recis.nn.hashtable_hook import FilterHook
from recis.nn.initializers import ConstantInitializer
from recis.nn.modules.hashtable_hook_impl import GlobalStepFilterHookImpl, HashtableHookFactory

INIT = 0.25
EXTRA = "sparse_adamw_exp_avg"


class Model(torch.nn.Module):
    def __init__(self, name="ft", filter_step=2, dim=2):
        super().__init__()
        self.tables = torch.nn.ModuleDict({"user": HashTable(
            [dim], name=name, block_size=4, initializer=ConstantInitializer(init_val=INIT),
            filter_hook=FilterHook("GlobalStepFilter", {"filter_step": filter_step}))})

    @property
    def ht(self):
        return self.tables["user"]


def rows_of(ht, ids):
    m = dict(zip(*(t.tolist() for t in ht.ids_map())))
    return [m[i] for i in ids]


def stamp(ht, row):
    return int(ht.impl.get_slot("step_filter")[row].item())


def test_filter_impl_is_created_with_buffer_and_slot():
    m = Model()
    impl = m.ht._filter_hook_impl
    assert isinstance(impl, GlobalStepFilterHookImpl)
    assert impl.filter_step == 2 and impl.global_step == 0
    sd = m.state_dict()
    key = "tables.user._filter_hook_impl._global_step"
    assert key in sd and sd[key].dtype == torch.int64 and sd[key].tolist() == [0]
    assert "ft" in sd and sd["ft"] is m.ht.impl
    assert "step_filter" in [s.name() for s in m.ht.slot_group().slots()]
    assert m.ht in HashtableHookFactory().get_filters()["GlobalStepFilter"]


def test_lookups_stamp_rows_with_the_global_step():
    m = Model()
    ht, impl = m.ht, m.ht._filter_hook_impl
    ht(torch.tensor([1, 2]))
    impl.update_step()
    impl.update_step(2)
    assert impl.global_step == 3
    ht(torch.tensor([2, 3]))
    r1, r2, r3 = rows_of(ht, [1, 2, 3])
    assert (stamp(ht, r1), stamp(ht, r2), stamp(ht, r3)) == (0, 3, 3)
    # eval lookups do not stamp
    ht.eval()
    impl.update_step()
    ht(torch.tensor([1]))
    assert stamp(ht, r1) == 0


def test_stale_ids_are_evicted_and_rows_reset_and_reused():
    m = Model(filter_step=2)
    ht, impl = m.ht, m.ht._filter_hook_impl
    ht.impl.add_slot(EXTRA, [2], torch.float32)
    hook = HashTableFilterHook(filter_interval=1)

    ht(torch.tensor([1, 2, 3]))                     # stamped 0
    r1, r2, r3 = rows_of(ht, [1, 2, 3])
    rows = torch.tensor([r1, r2, r3])
    ht.insert(torch.tensor([1, 2, 3]), torch.full((3, 2), 7.0))
    ht.impl.update_slot(EXTRA, rows, torch.full((3, 2), 3.0))
    hook.after_step(None, 1)                        # first call: remembers step 1, global step -> 1
    assert impl.global_step == 1 and hook.last_filter_step == 1
    ht(torch.tensor([3]))                           # stamped 1
    hook.after_step(None, 2)                        # global step 2: evicts stamps < 0 -> nothing
    assert sorted(ht.ids().tolist()) == [1, 2, 3] and hook.last_filter_step == 2
    hook.after_step(None, 3)                        # global step 3: evicts stamps < 1 -> ids 1, 2
    assert impl.global_step == 3
    assert ht.ids().tolist() == [3]
    assert m.state_dict()["tables.user._filter_hook_impl._global_step"].tolist() == [3]

    emb, extra = ht.embeddings(), ht.impl.get_slot(EXTRA)
    for r in (r1, r2):
        assert emb[r].tolist() == [INIT, INIT]      # embedding back to the initializer
        assert extra[r].tolist() == [0.0, 0.0]      # optimizer slot back to its initial value
        assert stamp(ht, r) == 0                    # the filter's own slot is preserved
    assert emb[r3].tolist() == [7.0, 7.0] and extra[r3].tolist() == [3.0, 3.0] and stamp(ht, r3) == 1
    # an evicted id looks up like a new id again
    ht.eval()
    assert ht(torch.tensor([1])).tolist() == [[0.0, 0.0]]
    ht.train()

    capacity = ht.embeddings().shape[0]
    ht(torch.tensor([10, 11]))
    new_rows = rows_of(ht, [10, 11])
    assert sorted(new_rows) == sorted([r1, r2])     # freed rows are reused first
    assert ht.embeddings().shape[0] == capacity
    assert all(stamp(ht, r) == 3 for r in new_rows)
    assert ht(torch.tensor([10])).tolist() == [[INIT, INIT]]

    hook.after_step(None, 4)                        # global step 4: evicts stamps < 2 -> id 3
    assert sorted(ht.ids().tolist()) == [10, 11]
    assert ht.embeddings()[r3].tolist() == [INIT, INIT]
    assert ht.impl.get_slot(EXTRA)[r3].tolist() == [0.0, 0.0]


def test_do_filter_directly_and_return_count():
    m = Model(filter_step=1)
    ht, impl = m.ht, m.ht._filter_hook_impl
    ht(torch.tensor([5, 6, 7]))
    impl.update_step(5)
    ht(torch.tensor([6]))
    assert impl.do_filter() == 2
    assert ht.ids().tolist() == [6]
    assert impl.do_filter() == 0


def test_filter_interval_controls_when_filters_run():
    m = Model(filter_step=1)
    ht, impl = m.ht, m.ht._filter_hook_impl
    hook = HashTableFilterHook(filter_interval=3)
    ht(torch.tensor([1]))
    hook.after_step(None, 10)          # remembers 10
    hook.after_step(None, 11)
    hook.after_step(None, 12)          # global step 3, stamp 0 < 2 would be stale, but no filter yet
    assert ht.ids().tolist() == [1] and impl.global_step == 3
    hook.after_step(None, 13)          # 13 - 10 >= 3 -> filter
    assert ht.ids().tolist() == [] and hook.last_filter_step == 13


def test_hook_drives_every_table():
    a, b = Model(name="fa", filter_step=1), Model(name="fb", filter_step=3)
    a.ht(torch.tensor([1]))
    b.ht(torch.tensor([1]))
    hook = HashTableFilterHook(filter_interval=1)
    filters = hook.ht_filters
    assert a.ht._filter_hook_impl in filters and b.ht._filter_hook_impl in filters
    for g in (1, 2, 3):
        hook.after_step(None, g)
    assert a.ht._filter_hook_impl.global_step == 3 and b.ht._filter_hook_impl.global_step == 3
    assert a.ht.ids().tolist() == []         # stamp 0 < 3 - 1
    assert b.ht.ids().tolist() == [1]        # stamp 0 >= 3 - 3
    hook.after_step(None, 4)
    assert b.ht.ids().tolist() == []         # stamp 0 < 4 - 3


@pytest.mark.parametrize("bad", [0, -1, 1.5, "10", True])
def test_filter_interval_validation(bad):
    with pytest.raises(ValueError):
        HashTableFilterHook(filter_interval=bad)
    hook = HashTableFilterHook(filter_interval=5)
    with pytest.raises(ValueError):
        hook.reset_filter_interval(bad)
    hook.reset_filter_interval(7)
    assert hook.filter_interval == 7


@pytest.mark.parametrize("params", [{"filter_step": 0}, {"filter_step": -3}, {"filter_step": 1.5}])
def test_filter_hook_validation(params):
    with pytest.raises(ValueError):
        FilterHook("GlobalStepFilter", params)


def test_unknown_filter_name():
    with pytest.raises(ValueError):
        FilterHook("LRUFilter", {})
    assert FilterHook("GlobalStepFilter").params == {"filter_step": 100}


def test_dynamic_embedding_filter_state_under_module_path():
    from recis.nn import DynamicEmbedding, EmbeddingOption

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = DynamicEmbedding(EmbeddingOption(
                embedding_dim=2, shared_name="fde", filter_hook=FilterHook("GlobalStepFilter", {"filter_step": 1})))

    net = Net()
    net.emb(torch.tensor([[1, 2]]))
    hook = HashTableFilterHook(filter_interval=1)
    for g in (1, 2, 3):
        hook.after_step(None, g)
    sd = net.state_dict()
    assert sd["emb._hashtable._filter_hook_impl._global_step"].tolist() == [3]
    assert net.emb.hashtable.ids().tolist() == []


def test_global_step_restored_from_the_dense_state_dict():
    from recis.nn.modules.hashtable import split_sparse_dense_state_dict
    m = Model(name="fsave")
    for _ in range(5):
        m.ht._filter_hook_impl.update_step()
    sparse, dense = split_sparse_dense_state_dict(m.state_dict())
    assert list(sparse) == ["fsave"]
    assert dense["tables.user._filter_hook_impl._global_step"].tolist() == [5]
    m2 = Model(name="fsave2")
    m2.load_state_dict(dense)
    assert m2.ht._filter_hook_impl.global_step == 5
