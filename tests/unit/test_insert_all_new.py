"""DynamicTableImpl.find_or_insert_rows when every id of the batch is new (a growing table's
batch takes the ids and rows as they are, without selecting the new ones): rows, initial
values and the change log equal those of batches with known ids mixed in."""
import torch

from recis.nn import HashTable
from recis.nn.initializers import NormalInitializer


def test_all_new_batch_gets_initial_values_and_logged_rows():
    ht = HashTable([4], name="t_all_new", initializer=NormalInitializer(std=0.1))
    impl = ht.impl
    impl.track_changes()
    first = torch.tensor([11, 5, 9, 2], dtype=torch.int64)
    rows = impl.find_or_insert_rows(first)                       # every id new
    assert rows.tolist() == [0, 1, 2, 3]
    mixed = torch.tensor([5, 40, 2, 41], dtype=torch.int64)       # two known, two new
    rows2 = impl.find_or_insert_rows(mixed)
    assert rows2.tolist() == [1, 4, 3, 5]
    want = impl.init_rows(torch.tensor([11, 5, 9, 2, 40, 41])).reshape(6, 4)
    assert torch.equal(impl.storage.embedding[:6], want.to(impl.dtype))
    ch = impl.take_changes()
    assert sorted(ch.ids.tolist()) == [2, 5, 9, 11, 40, 41]
    order = ch.ids.argsort()
    got = ch.values["embedding"][order]
    assert torch.equal(got, want[torch.tensor([3, 1, 2, 0, 4, 5])].to(impl.dtype))


def test_all_new_batch_view_of_user_tensor_is_not_changed():
    ht = HashTable([2], name="t_all_new_view")
    ids = torch.arange(100, 110, dtype=torch.int64).view(2, 5)
    keep = ids.clone()
    rows = ht.impl.find_or_insert_rows(ids)
    assert torch.equal(ids, keep) and rows.tolist() == list(range(10))
    assert ht.impl.find_rows(keep).tolist() == list(range(10))
