"""``recis_compat/backend/grouped_exchange.py`` in one process (a one-rank gloo group): a
``GroupedLookup`` over several sharded tables gives every lookup the rows a lookup per table
gives, its failures raise ``DistributedExchangeError`` naming every table of the group, this
rank and the direction, and bad input is refused naming the table. The 2-rank behaviour
(bit-identical to one exchange per group, three collectives) is tests/distributed/test_grouped_exchange.py.
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from recis_compat.backend import exchange
from recis_compat.backend.dynamic_table import DynamicTable, DynamicTableConfig
from recis_compat.backend.grouped_exchange import GroupedLookup
from recis_compat.backend.sharding import DistributedExchangeError, ShardedDynamicTable


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from torchrec.distributed.types import ShardingEnv
    if dist.is_initialized():
        pytest.skip("a process group exists already in this process")
    store = tmp_path_factory.mktemp("pg") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield ShardingEnv.from_process_group(dist.group.WORLD)
    dist.destroy_process_group()


def _table(env, name: str, dim: int, value: float, children=None) -> ShardedDynamicTable:
    cfg = DynamicTableConfig(name=name, embedding_dim=dim, sample_rows=lambda k: torch.full((k, dim), value),
                             children=children)
    return ShardedDynamicTable(DynamicTable(cfg), env)


def test_rows_equal_one_lookup_per_table(env):
    a, b = _table(env, "a", 4, 0.5), _table(env, "b", 8, -0.25)
    a.insert(torch.tensor([3, 7]), torch.arange(8.).view(2, 4))
    ids = [torch.tensor([[7, 3], [9, 7]]), torch.tensor([5, 5, 6])]
    batch = GroupedLookup([a, b, a], [ids[0], ids[1], ids[0]])
    batch.send()
    got = batch.fetch([False, False, True]).wait()
    for k, (table, x) in enumerate(zip([a, b, a], [ids[0], ids[1], ids[0]])):
        expected = table.lookup(x.reshape(-1))
        torch.testing.assert_close(got.rows(k)[batch.inverse[k]], expected, rtol=0, atol=0)
        assert got.rows(k).shape == (batch.unique[k].numel(), table.config.embedding_dim)
    # the lookups of one dim are one tensor, in lookup order
    assert got.spans[0][0] is got.spans[2][0] and got.spans[2][1] == batch.unique[0].numel()


def test_lookups_without_ids_give_empty_rows(env):
    a, b = _table(env, "e1", 4, 0.1), _table(env, "e2", 8, 0.2)
    empty = torch.zeros((0,), dtype=torch.int64)
    batch = GroupedLookup([a, b], [empty, torch.zeros((3, 0), dtype=torch.int64)])
    batch.send()
    got = batch.fetch([False, False]).wait()
    assert got.rows(0).shape == (0, 4) and got.rows(1).shape == (0, 8)
    assert batch.send_counts == [[0], [0]] and batch.received_counts == [[0], [0]]


def test_failed_rows_exchange_names_every_table_and_the_rank(env, monkeypatch):
    a, b = _table(env, "user", 4, 0.1, children=["user", "user_ro"]), _table(env, "item", 4, 0.2)

    def fail(*args, **kwargs):
        raise RuntimeError("Connection closed by peer")

    monkeypatch.setattr(exchange.dist, "all_to_all_single", fail)
    ids = [torch.tensor([1, 2]), torch.tensor([3])]
    # one rank exchanges no ids: the rows exchange is the first collective here
    batch = GroupedLookup([a, b], ids)
    batch.send()
    with pytest.raises(DistributedExchangeError) as info:
        batch.fetch([False, False])
    text = str(info.value)
    for part in ("tables 'user' (shared_names user_ro), 'item'", "rank 0 of 1", "embedding all-to-all failed in forward",
                 "Connection closed by peer"):
        assert part in text, text


def test_failed_gradient_exchange_names_the_tables_in_backward(env, monkeypatch):
    a, b = _table(env, "g1", 4, 0.1), _table(env, "g2", 2, 0.3)
    a.train()
    b.train()
    batch = GroupedLookup([a, b], [torch.tensor([1, 2]), torch.tensor([3])])
    batch.send()
    rows = batch.fetch([False, False]).wait()
    loss = rows.rows(0).sum() + rows.rows(1).sum()

    def fail(*args, **kwargs):
        raise RuntimeError("Connection reset")

    monkeypatch.setattr(exchange.dist, "all_to_all_single", fail)
    with pytest.raises(DistributedExchangeError) as info:
        loss.backward()
    assert "tables 'g1', 'g2' (one grouped exchange), rank 0 of 1: the embedding-gradient all-to-all failed in " \
           "backward" in str(info.value)


def test_gradients_reach_every_table_as_one_lookup_per_table(env):
    a, b = _table(env, "h1", 4, 0.1), _table(env, "h2", 2, 0.3)
    a.train()
    b.train()
    batch = GroupedLookup([a, b], [torch.tensor([4, 5, 4]), torch.tensor([6])])
    batch.send()
    rows = batch.fetch([False, False]).wait()
    ((rows.rows(0)[batch.inverse[0]] * torch.arange(12.).view(3, 4)).sum() + (rows.rows(1) * 2).sum()).backward()
    got_rows, got_grad = a.impl.summed_grad()
    ids, slots = a.impl.ids_map()
    by_row = dict(zip(slots.tolist(), ids.tolist()))
    grads = {by_row[r]: g for r, g in zip(got_rows.tolist(), got_grad)}
    torch.testing.assert_close(grads[4], torch.tensor([8., 10., 12., 14.]))
    torch.testing.assert_close(grads[5], torch.tensor([4., 5., 6., 7.]))
    torch.testing.assert_close(b.impl.summed_grad()[1], torch.full((1, 2), 2.))


def test_bad_input_is_refused_naming_the_table(env):
    a = _table(env, "bad_ids", 4, 0.1)
    with pytest.raises(TypeError, match="bad_ids"):
        GroupedLookup([a], [torch.tensor([1.0, 2.0])])
    with pytest.raises(ValueError, match="one ids tensor per table"):
        GroupedLookup([a, a], [torch.tensor([1])])
    plain = DynamicTable(DynamicTableConfig(name="plain_t", embedding_dim=4, sample_rows=lambda k: torch.zeros(k, 4)))
    with pytest.raises(TypeError, match="plain_t.*not a ShardedDynamicTable"):
        GroupedLookup([a, plain], [torch.tensor([1]), torch.tensor([2])])
