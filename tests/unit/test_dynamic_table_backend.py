"""recis_compat.backend: DynamicTable (KeyedJaggedTensor in, per-key JaggedTensor out),
DynamicTableImpl state round trip, ChildrenInfo and the 52-bit child encoding."""
import pytest
import torch
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from recis_compat.backend.children import (ID_MASK, MAX_CHILDREN, ChildrenInfo, decode_ids, encode_ids)
from recis_compat.backend.dynamic_table import DynamicTable, DynamicTableConfig
from recis_compat.backend.table_impl import DynamicTableImpl

DIM = 3


def counter(start=1.0):
    """Initial rows 1, 2, 3, ... (each row filled with its draw number)."""
    state = {"n": start}

    def sample(k):
        vals = torch.arange(state["n"], state["n"] + k, dtype=torch.float32).unsqueeze(1).repeat(1, DIM)
        state["n"] += k
        return vals
    return sample


def table(name="dt", block=4, **kw):
    return DynamicTable(DynamicTableConfig(name=name, embedding_dim=DIM, sample_rows=counter(), block_size=block, **kw))


def kjt(keys, values, lengths, weights=None):
    return KeyedJaggedTensor.from_lengths_sync(
        keys=keys, values=torch.tensor(values, dtype=torch.int64), lengths=torch.tensor(lengths),
        weights=None if weights is None else torch.tensor(weights, dtype=torch.float32))


def stored(t, ids):
    """Rows of the embedding slot for ``ids`` via the id map (zeros if absent)."""
    rows = t.impl.find_rows(torch.tensor(ids, dtype=torch.int64))
    return t.impl.gather(rows)


# ------------------------------------------------------------------------------ DynamicTable
def test_kjt_lookup_per_key():
    t = table()
    f = kjt(["f1", "f2"], [5, 6, 5, 7, 8], [2, 0, 1, 2], weights=[1.0, 2.0, 3.0, 4.0, 5.0])
    out = t(f)
    assert list(out) == ["f1", "f2"]
    assert all(isinstance(v, JaggedTensor) for v in out.values())
    assert out["f1"].lengths().tolist() == [2, 0] and out["f2"].lengths().tolist() == [1, 2]
    assert out["f2"].weights().tolist() == [3.0, 4.0, 5.0]
    assert out["f1"].values().shape == (2, DIM) and out["f2"].values().shape == (3, DIM)
    # values are the stored rows; the same id gives the same vector in both keys
    torch.testing.assert_close(out["f1"].values(), stored(t, [5, 6]))
    torch.testing.assert_close(out["f2"].values(), stored(t, [5, 7, 8]))
    assert torch.equal(out["f1"].values()[0], out["f2"].values()[0])
    assert len(t.impl) == 4
    # the same as lookup() of the flat values
    torch.testing.assert_close(torch.cat([out["f1"].values(), out["f2"].values()]),
                               t.lookup(torch.tensor([5, 6, 5, 7, 8])))
    # initial values come from sample_rows: four distinct draws, not zeros
    vals = stored(t, [5, 6, 7, 8])[:, 0]
    assert len(set(vals.tolist())) == 4 and (vals > 0).all()


def test_kjt_gradients_go_to_the_table_buffer():
    t = table()
    f = kjt(["a", "b"], [1, 2, 1], [2, 1])
    out = t(f)
    (out["a"].values().sum() + 10 * out["b"].values().sum()).backward()
    rows, grads = t.impl.grad_rows()
    r1, r2 = t.impl.find_rows(torch.tensor([1, 2])).tolist()
    got = dict(zip(rows.tolist(), grads.tolist()))
    assert got == {r1: [11.0] * DIM, r2: [1.0] * DIM}
    assert t._anchor.grad is None or t._anchor.grad.abs().sum() == 0


def test_eval_vs_train():
    t = table()
    t(kjt(["a"], [1, 2], [2]))
    t.eval()
    out = t(kjt(["a"], [2, 3, 1], [3]))["a"].values()
    assert not out.requires_grad
    torch.testing.assert_close(out[[0, 2]], stored(t, [2, 1]))
    assert out[1].tolist() == [0.0] * DIM
    assert len(t.impl) == 2 and t.impl.find_rows(torch.tensor([3])).tolist() == [-1]
    t.train()
    t(kjt(["a"], [3], [1]))
    assert len(t.impl) == 3


def test_readonly_lookup_does_not_insert_and_drops_missing_grads():
    t = table()
    t.lookup(torch.tensor([1]))
    t.impl.clear_grad()
    out = t.lookup(torch.tensor([1, 9]), readonly=True)
    assert out[1].tolist() == [0.0] * DIM and len(t.impl) == 1
    out.sum().backward()
    rows, grads = t.impl.grad_rows()
    assert rows.tolist() == t.impl.find_rows(torch.tensor([1])).tolist()


def test_grad_reduce_by_id_and_worker_scale():
    t = table(name="dt_id", grad_reduce_by="id")
    t.lookup(torch.tensor([4, 4, 4, 5])).mul(torch.tensor([[1.0], [2.0], [6.0], [1.0]])).sum().backward()
    r4, r5 = t.impl.find_rows(torch.tensor([4, 5])).tolist()
    got = dict(zip(*(x.tolist() for x in t.impl.grad_rows())))
    assert got[r4] == [3.0] * DIM and got[r5] == [1.0] * DIM
    w = table(name="dt_worker", world_size=2)
    w.lookup(torch.tensor([4, 4])).sum().backward()
    assert w.impl.grad_rows()[1].tolist() == [[1.0] * DIM]


def test_config_and_input_validation():
    with pytest.raises(ValueError):
        table(grad_reduce_by="rank")
    t = table()
    with pytest.raises(TypeError, match="dt"):
        t(KeyedJaggedTensor.from_lengths_sync(keys=["a"], values=torch.tensor([1, 2], dtype=torch.int32),
                                              lengths=torch.tensor([2])))
    with pytest.raises(TypeError):
        t.lookup(torch.tensor([1.0]))


def test_integer_table_is_read_only():
    t = DynamicTable(DynamicTableConfig(name="dt_i8", embedding_dim=2, dtype=torch.int8, block_size=4,
                                        sample_rows=lambda k: torch.zeros(k, 2, dtype=torch.int8)))
    t.impl.insert(torch.tensor([1]), torch.tensor([[3, 4]], dtype=torch.int8))
    out = t.lookup(torch.tensor([1, 2]))
    assert out.tolist() == [[3, 4], [0, 0]] and len(t.impl) == 1


def test_module_to_moves_nothing_but_keeps_dtype():
    t = table()
    t.lookup(torch.tensor([1]))
    impl = t.impl
    t.to(torch.float64)
    t.to("cpu")
    assert t.impl is impl and impl.dtype == torch.float32 and t.lookup(torch.tensor([1])).dtype == torch.float32
    assert list(t.parameters()) == []


# ------------------------------------------------------------------------------ impl state
def test_impl_state_dict_round_trip_with_extra_slots():
    t = table(name="dt_src", block=4)
    t.lookup(torch.tensor([10, 20, 30, 40, 50]))
    impl = t.impl
    impl.add_slot("sparse_adamw_exp_avg", [DIM], torch.float32)
    impl.add_slot("step_filter", [1], torch.int64, 0)
    rows = impl.find_rows(torch.tensor([10, 30]))
    impl.update_slot("sparse_adamw_exp_avg", rows, torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
    impl.update_slot("step_filter", rows, torch.tensor([[7], [8]]))
    impl.delete(torch.tensor([20]))                  # evicted ids are not in the state
    sd = impl.state_dict()
    assert set(sd) == {"id", "embedding", "sparse_adamw_exp_avg", "step_filter"}
    assert sorted(sd["id"].tolist()) == [10, 30, 40, 50]
    assert sd["embedding"].shape == (4, DIM) and sd["step_filter"].shape == (4, 1)

    dst = DynamicTableImpl("dt_dst", DIM, torch.float32, "cpu", counter(100.0), 4, ChildrenInfo(["dt_dst"]))
    dst.find_or_insert_rows(torch.tensor([999]))     # existing content is replaced
    dst.load_state_dict(sd)
    assert sorted(dst.ids().tolist()) == [10, 30, 40, 50]
    q = torch.tensor([10, 30, 40, 50, 20, 999])
    torch.testing.assert_close(dst.gather(dst.find_rows(q)), impl.gather(impl.find_rows(q)))
    assert dst.find_rows(torch.tensor([20, 999])).tolist() == [-1, -1]
    r = dst.find_rows(torch.tensor([10, 30, 40]))
    assert dst.get_slot("sparse_adamw_exp_avg")[r].tolist() == [[1, 2, 3], [4, 5, 6], [0, 0, 0]]
    assert dst.get_slot("step_filter")[r].view(-1).tolist() == [7, 8, 0]
    assert dst.get_slot("step_filter").dtype == torch.int64
    # the loaded state round-trips again (rows renumbered, contents equal per id)
    sd2 = dst.state_dict()
    order1, order2 = sd["id"].argsort(), sd2["id"].argsort()
    for k in sd:
        assert torch.equal(sd[k][order1], sd2[k][order2])
    # the loaded table keeps working: new ids get fresh rows
    new_row = dst.find_or_insert_rows(torch.tensor([60]))
    assert new_row.item() not in r.tolist() and len(dst) == 5


def test_impl_load_state_dict_validation():
    impl = DynamicTableImpl("dt_v", DIM, torch.float32, "cpu", counter(), 4, ChildrenInfo(["dt_v"]))
    with pytest.raises(ValueError, match="id"):
        impl.load_state_dict({"embedding": torch.zeros(2, DIM)})
    with pytest.raises(ValueError):
        impl.load_state_dict({"id": torch.tensor([1, 2]), "embedding": torch.zeros(3, DIM)})


def test_impl_grad_is_sparse_over_capacity():
    impl = DynamicTableImpl("dt_g", DIM, torch.float32, "cpu", counter(), 4, ChildrenInfo(["dt_g"]))
    impl.find_or_insert_rows(torch.tensor([1, 2, 3]))
    assert impl.grad_rows() is None and impl.grad()._nnz() == 0
    impl.accept_grad(torch.tensor([2, 0, 2, -1]), torch.ones(4, DIM))
    g = impl.grad()
    assert g.shape == (impl.storage.capacity, DIM)
    assert g.to_dense()[[0, 1, 2]].tolist() == [[1.0] * DIM, [0.0] * DIM, [2.0] * DIM]


# ------------------------------------------------------------------------------ ChildrenInfo
@pytest.mark.parametrize("child", [0, 1, 7, 2047, 2048, 4094])
def test_encode_decode(child):
    raw = torch.tensor([0, 1, 12345, (1 << 52) - 1, -1, -5, -(1 << 40)], dtype=torch.int64)
    enc = encode_ids(raw, child)
    ids, idx = decode_ids(enc)
    assert idx.tolist() == [child] * raw.numel()
    assert ids.tolist() == [int(x) & ID_MASK for x in raw.tolist()]
    # the encoded 64 bits are (low 52 bits of id) | child << 52
    assert [x & ((1 << 64) - 1) for x in enc.tolist()] == \
        [(int(x) & ID_MASK) | (child << 52) for x in raw.tolist()]
    ci = ChildrenInfo([f"c{i}" for i in range(child + 1)], coalesced=True)
    assert torch.equal(ci.encode_id(raw, child), enc)


def test_negative_ids_keep_only_low_52_bits():
    enc = encode_ids(torch.tensor([-5]), 3)
    assert decode_ids(enc)[0].item() == (1 << 52) - 5
    assert decode_ids(enc)[1].item() == 3
    assert encode_ids(torch.tensor([-5]), 0).item() == (1 << 52) - 5


def test_children_info_api_and_limits():
    ci = ChildrenInfo(["a", "b", "c"], coalesced=True, table="T")
    assert ci.children() == ["a", "b", "c"] and len(ci) == 3
    assert ci.child_index("b") == 1 and ci.child_at(2) == "c"
    assert ci.has_child("a") and not ci.has_child("z") and ci.is_coalesce()
    assert ci.index_bits_num() == 12 and ci.id_bits_num() == 52
    assert ci.id_mask == ID_MASK and ci.index_mask & ID_MASK == 0 and ci.index_mask | ID_MASK == -1
    assert ci.max_children_num() == MAX_CHILDREN == 4095
    with pytest.raises(KeyError):
        ci.child_index("z")
    assert len(ChildrenInfo([f"c{i}" for i in range(4095)])) == 4095
    with pytest.raises(ValueError, match="4095"):
        ChildrenInfo([f"c{i}" for i in range(4096)], table="T")
    with pytest.raises(ValueError):
        ChildrenInfo([])
    with pytest.raises(ValueError, match="duplicate"):
        ChildrenInfo(["a", "b", "a"])
    assert not ChildrenInfo(["x"]).is_coalesce()


@pytest.mark.parametrize("scale", [None, 0.5, "per_row"])
@pytest.mark.parametrize("readonly", [False, True])
def test_expanded_lookup_equals_lookup_then_gather(scale, readonly):
    """``lookup_unique_scaled(..., expand=inverse)`` (the owner side of a sharded lookup: one
    gather of every received position) gives the values and buffered gradients of a lookup of
    the distinct ids followed by ``gather_rows(emb, inverse)``, absent ids (read-only) included."""
    from recis_compat.ops.pooling import gather_rows
    uniq = torch.tensor([11, 7, 42, 5], dtype=torch.int64)
    inverse = torch.tensor([0, 2, 2, 1, 3, 0, 2], dtype=torch.int64)
    per_row = torch.tensor([1.0, 0.5, 0.25, 2.0])
    s = per_row if scale == "per_row" else scale
    g = torch.randn(inverse.numel(), DIM, generator=torch.Generator().manual_seed(3))
    results = []
    for expanded in (False, True):
        t = table(name=f"exp_{expanded}_{readonly}_{scale}")
        t.train()
        t.impl.find_or_insert_rows(uniq[:2])            # 11 and 7 stored; 42 and 5 new (or absent)
        if expanded:
            out = t.lookup_unique_scaled(uniq, readonly, s, expand=inverse)
        else:
            out = gather_rows(t.lookup_unique_scaled(uniq, readonly, s), inverse)
        assert out.shape == (inverse.numel(), DIM)
        out.backward(g)
        got = t.impl.grad_rows()
        results.append((out.detach(), got, len(t.impl)))
    (o0, g0, n0), (o1, g1, n1) = results
    assert torch.equal(o0, o1) and n0 == n1
    assert torch.equal(g0[0], g1[0]) and torch.equal(g0[1], g1[1])          # bit for bit
    if readonly:
        assert n1 == 2 and g1[0].numel() == 2          # absent ids: zero rows, no gradient
