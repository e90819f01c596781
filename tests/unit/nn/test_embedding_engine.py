"""recis.nn.EmbeddingEngine (RecIS 1.0; see COMPATIBILITY.md): table merging, children and id encoding, output
shapes, pass-through keys, errors, and one SGD step against a dense nn.EmbeddingBag model."""
import hashlib

import pytest
import torch

from recis.nn import EmbeddingEngine, EmbeddingOption
from recis.nn.initializers import ConstantInitializer, NormalInitializer
from recis.nn.modules.hashtable import filter_out_sparse_param
from recis.ragged.tensor import RaggedTensor
from reference_kernels import tile_ref

ID_MASK = (1 << 52) - 1


def normal(seed=7, std=1.0):
    return NormalInitializer(std=std, generator=torch.Generator().manual_seed(seed))


def opt(shared, dim=4, combiner="sum", init=None, **kw):
    return EmbeddingOption(embedding_dim=dim, shared_name=shared, combiner=combiner,
                           initializer=init if init is not None else normal(), **kw)


def ht_name(option):
    return "CoalescedHashtable_" + hashlib.sha256(option.coalesced_info().encode()).hexdigest()


def encode(ids, child):
    ids = torch.as_tensor(ids, dtype=torch.int64)
    top = child << 52
    top = top - (1 << 64) if top >= (1 << 63) else top
    return (ids & ID_MASK) | top


def ragged(rows, weights=None):
    vals = torch.tensor([x for r in rows for x in r], dtype=torch.int64)
    off = torch.tensor([0] + torch.tensor([len(r) for r in rows]).cumsum(0).tolist(), dtype=torch.int32)
    w = None if weights is None else torch.tensor([x for r in weights for x in r], dtype=torch.float32)
    return RaggedTensor(vals, off, weight=w)


class Ref:
    """Reads a physical table through the public API: impl from filter_out_sparse_param, child
    index from children_info(), rows from ids_map()."""

    def __init__(self, engine, option):
        self.impl = filter_out_sparse_param(engine)[ht_name(option)]
        self.child = self.impl.children_info().children().index(option.shared_name)
        ids, rows = self.impl.ids_map()
        self.map = dict(zip(ids.tolist(), rows.tolist()))

    def rows(self, ids):
        return torch.tensor([self.map.get(int(e), -1) for e in encode(ids, self.child).tolist()], dtype=torch.int64)

    def emb(self, ids):
        rows = self.rows(ids)
        out = self.impl.embedding.index_select(0, rows.clamp(min=0)).clone()
        out[rows < 0] = 0
        return out


def pool(vecs, offsets, weights=None, mean=False):
    out = []
    for b in range(len(offsets) - 1):
        v = vecs[offsets[b]:offsets[b + 1]]
        w = torch.ones(v.shape[0]) if weights is None else weights[offsets[b]:offsets[b + 1]]
        s = (v * w.unsqueeze(1)).sum(0)
        out.append(s / w.sum() if mean and v.shape[0] else s)
    return torch.stack(out)


# ------------------------------------------------------------------------------ merging
def test_same_config_merges_into_one_coalesced_table():
    opts = {"a": opt("sa"), "b": opt("sb", combiner="mean"), "c": opt("sa"), "d": opt("sd")}
    eng = EmbeddingEngine(opts)
    names = [ht_name(o) for o in opts.values()]
    assert len(set(names)) == 1
    sparse = filter_out_sparse_param(eng)
    assert list(sparse) == [names[0]]
    assert names[0].startswith("CoalescedHashtable_") and len(names[0]) == len("CoalescedHashtable_") + 64
    ci = sparse[names[0]].children_info()
    assert ci.children() == ["sa", "sb", "sd"] and ci.is_coalesce()
    # dense state: the per-table init seed buffer; the table object under its bare name
    assert list(eng.state_dict()) == [f"_ht.{names[0]}._hashtable._init_seed", names[0]]


def test_different_dim_or_initializer_gives_separate_tables():
    opts = {"a": opt("sa", dim=4), "b": opt("sb", dim=8), "c": opt("sc", dim=4, init=ConstantInitializer(init_val=1.0)),
            "d": opt("sd", dim=4)}
    eng = EmbeddingEngine(opts)
    sparse = filter_out_sparse_param(eng)
    assert len(sparse) == 3
    assert sparse[ht_name(opts["a"])] is sparse[ht_name(opts["d"])]
    assert sparse[ht_name(opts["a"])].children_info().children() == ["sa", "sd"]
    assert sparse[ht_name(opts["b"])].children_info().children() == ["sb"]
    assert sparse[ht_name(opts["b"])].dim == 8


def test_ids_are_encoded_with_the_child_index():
    opts = {"a": opt("sa"), "b": opt("sb"), "c": opt("sc")}
    eng = EmbeddingEngine(opts)
    eng({"a": torch.tensor([[5]]), "b": torch.tensor([[5, 6]]), "c": torch.tensor([[-1]])})
    impl = filter_out_sparse_param(eng)[ht_name(opts["a"])]
    stored = sorted(impl.ids().tolist())
    expected = sorted([5, (1 << 52) | 5, (1 << 52) | 6, (2 << 52) | ID_MASK])
    assert stored == expected
    top = [(i >> 52) & 0xFFF for i in impl.ids().tolist()]
    assert sorted(top) == [0, 1, 1, 2]


def test_raw_id_top_bits_are_dropped_q8():
    """Q8 (kept): ids keep only their low 52 bits in a coalesced table."""
    opts = {"a": opt("sa")}
    eng = EmbeddingEngine(opts)
    out = eng({"a": torch.tensor([[3], [3 | (5 << 52)]])})
    torch.testing.assert_close(out["a"][0], out["a"][1])
    assert filter_out_sparse_param(eng)[ht_name(opts["a"])].ids().tolist() == [3]


def test_shared_name_shares_rows_and_different_names_do_not():
    opts = {"f1": opt("s"), "f2": opt("s"), "f3": opt("t")}
    eng = EmbeddingEngine(opts)
    ids = torch.tensor([[5], [6]])
    out = eng({"f1": ids, "f2": ids, "f3": ids})
    assert torch.equal(out["f1"], out["f2"])
    assert not torch.allclose(out["f1"], out["f3"])
    r = Ref(eng, opts["f1"])
    assert torch.equal(r.rows([5, 6]), Ref(eng, opts["f2"]).rows([5, 6]))
    assert len(r.impl) == 4                              # 5, 6 of child "s" and of child "t"
    # updating the shared rows changes both features, not the other child
    r.impl.update_slot("embedding", r.rows([5]), torch.full((1, 4), 9.0))
    out2 = eng({"f1": ids, "f2": ids, "f3": ids})
    assert out2["f1"][0].tolist() == [9.0] * 4 and out2["f2"][0].tolist() == [9.0] * 4
    assert torch.equal(out2["f3"], out["f3"])


# ------------------------------------------------------------------------------ outputs
def test_output_shapes_and_values():
    t = {"tile_len": 3}
    opts = {"dense_sum": opt("a"), "rag_mean": opt("b", combiner="mean"), "seq": opt("c"),
            "tile_dense": opt("d", combiner="tile", combiner_kwargs=t),
            "tile_rag": opt("e", combiner="tile", combiner_kwargs=t)}
    eng = EmbeddingEngine(opts)
    rows = [[1, 2], [], [3, 4, 5, 6]]
    seq = RaggedTensor(torch.tensor([1, 2, 3, 4]), [torch.tensor([0, 2, 4]), torch.tensor([0, 1, 1, 3, 4])])
    dense = torch.tensor([[1, 2], [3, 4], [5, 5]])
    out = eng({"dense_sum": dense, "rag_mean": ragged(rows), "seq": seq, "tile_dense": dense,
               "tile_rag": ragged(rows)})
    assert list(out) == list(opts)
    assert out["dense_sum"].shape == (3, 4)
    assert out["rag_mean"].shape == (3, 4)
    assert out["seq"].shape == (2, 2, 4)
    assert out["tile_dense"].shape == (3, 12)
    assert out["tile_rag"].shape == (3, 3, 4)

    def ref(fea):
        return Ref(eng, opts[fea])
    torch.testing.assert_close(out["dense_sum"], pool(ref("dense_sum").emb(dense.flatten()), [0, 2, 4, 6]))
    flat = [x for r in rows for x in r]
    torch.testing.assert_close(out["rag_mean"], pool(ref("rag_mean").emb(flat), [0, 2, 2, 6], mean=True))
    torch.testing.assert_close(out["seq"], pool(ref("seq").emb([1, 2, 3, 4]), [0, 1, 1, 3, 4]).view(2, 2, 4))
    r = ref("tile_rag")
    torch.testing.assert_close(out["tile_rag"], tile_ref(r.impl.embedding, r.rows(flat), torch.tensor([0, 2, 2, 6]), 3))
    r = ref("tile_dense")
    torch.testing.assert_close(out["tile_dense"], tile_ref(r.impl.embedding, r.rows(dense.flatten()),
                                                           torch.tensor([0, 2, 4, 6]), 3).reshape(3, 12))


def test_bad_shapes():
    eng = EmbeddingEngine({"a": opt("a")})
    with pytest.raises(IndexError):
        eng({"a": torch.tensor([1, 2])})
    unpadded = RaggedTensor(torch.arange(10), [torch.tensor([0, 2, 3]), torch.tensor([0, 2, 4, 5, 7, 10])])
    with pytest.raises(RuntimeError, match="RaggedTensor must pad before lookup"):
        eng({"a": unpadded})
    with pytest.raises(TypeError, match="'a'"):
        eng({"a": torch.tensor([[1.0]])})


def test_pass_through_keys_and_missing_options():
    eng = EmbeddingEngine({"a": opt("a"), "b": opt("b")})
    label = torch.tensor([1.0, 0.0])
    rt = ragged([[7, 8], [], [9]])
    multi = {"multi_hash_0": torch.tensor([1])}
    out = eng({"a": torch.tensor([[1], [2]]), "label": label, "rt": rt, "mh": multi, "n": 3})
    assert list(out) == ["a", "label", "rt", "mh", "n"]           # "b" missing from the input: skipped
    assert out["label"] is label
    assert torch.equal(out["rt"], torch.tensor([[7, 8], [0, 0], [9, 0]]))
    assert out["mh"] is multi and out["n"] == 3
    with pytest.raises(TypeError):
        eng({"a": torch.tensor([[1]]), "sp": torch.tensor([[0, 1.0]]).to_sparse()})
    out = eng({"label": label})
    assert list(out) == ["label"]


def test_weighted_sum_and_mean_in_one_table():
    opts = {"ws": opt("x"), "wm": opt("y", combiner="mean"), "plain": opt("z"), "nouse": opt("u", use_weight=False)}
    eng = EmbeddingEngine(opts)
    rows = [[1, 2, 3], [4], []]
    w = [[0.5, 2.0, 1.0], [3.0], []]
    wt = torch.tensor([x for r in w for x in r])
    out = eng({"ws": ragged(rows, w), "wm": ragged(rows, w), "plain": torch.tensor([[1, 2], [3, 3]]),
               "nouse": ragged(rows, w)})
    assert len(filter_out_sparse_param(eng)) == 1
    flat = [x for r in rows for x in r]
    off = [0, 3, 4, 4]
    torch.testing.assert_close(out["ws"], pool(Ref(eng, opts["ws"]).emb(flat), off, wt))
    torch.testing.assert_close(out["wm"], pool(Ref(eng, opts["wm"]).emb(flat), off, wt, mean=True))
    torch.testing.assert_close(out["plain"], pool(Ref(eng, opts["plain"]).emb([1, 2, 3, 3]), [0, 2, 4]))
    torch.testing.assert_close(out["nouse"], pool(Ref(eng, opts["nouse"]).emb(flat), off))


def test_mixed_tile_lengths():
    opts = {"t2": opt("a", combiner="tile", combiner_kwargs={"tile_len": 2}),
            "t4": opt("b", combiner="tile", combiner_kwargs={"tile_len": 4})}
    eng = EmbeddingEngine(opts)
    rows = [[1, 2, 3], [4]]
    out = eng({"t2": ragged(rows), "t4": ragged(rows)})
    assert out["t2"].shape == (2, 2, 4) and out["t4"].shape == (2, 4, 4)
    for fea, tl in (("t2", 2), ("t4", 4)):
        r = Ref(eng, opts[fea])
        torch.testing.assert_close(out[fea], tile_ref(r.impl.embedding, r.rows([1, 2, 3, 4]), torch.tensor([0, 3, 4]), tl))


@pytest.mark.parametrize("fp16", [True, False])
def test_int8_table_with_and_without_fp16(fp16):
    opts = {"q": opt("q", dtype=torch.int8, fp16_enabled=fp16, init=ConstantInitializer(init_val=0))}
    eng = EmbeddingEngine(opts)
    impl = filter_out_sparse_param(eng)[ht_name(opts["q"])]
    impl.insert(encode([1, 2], 0), torch.tensor([[1, 2, 3, 4], [10, 20, 30, 40]], dtype=torch.int8))
    out = eng({"q": torch.tensor([[1, 2], [2, 3]])})
    assert out["q"].dtype == (torch.float16 if fp16 else torch.float32)
    assert out["q"].tolist() == [[11, 22, 33, 44], [10, 20, 30, 40]]
    assert len(impl) == 2                                     # read-only: id 3 not inserted


def test_int8_table_lookup_before_any_insert():
    eng = EmbeddingEngine({"q": opt("q", dtype=torch.int8, fp16_enabled=True, init=ConstantInitializer(init_val=0))})
    out = eng({"q": torch.tensor([[1, 2]])})
    assert out["q"].dtype == torch.float16 and out["q"].tolist() == [[0.0] * 4]


def test_trainable_false():
    opts = {"frozen": opt("f", trainable=False), "live": opt("l")}
    eng = EmbeddingEngine(opts)
    out = eng({"frozen": torch.tensor([[1, 2]]), "live": torch.tensor([[1, 2]])})
    assert not out["frozen"].requires_grad and out["live"].requires_grad
    assert len(Ref(eng, opts["frozen"]).impl) == 4          # frozen ids are inserted too
    assert (Ref(eng, opts["frozen"]).rows([1, 2]) >= 0).all()


# ------------------------------------------------------------------------------ errors
def test_shared_name_with_two_configs():
    with pytest.raises(RuntimeError) as e:
        EmbeddingEngine({"fa": opt("shared", dim=4), "fb": opt("shared", dim=8)})
    msg = str(e.value)
    assert "shared" in msg and "fa" in msg and "fb" in msg


def test_more_than_4095_shared_names_in_one_table():
    init = ConstantInitializer(init_val=0)
    opts = {f"f{i}": EmbeddingOption(embedding_dim=1, shared_name=f"s{i}", initializer=init) for i in range(4096)}
    with pytest.raises(ValueError, match="4095"):
        EmbeddingEngine(opts)


def test_4095_shared_names_fit():
    init = ConstantInitializer(init_val=0.5)
    opts = {f"f{i}": EmbeddingOption(embedding_dim=1, shared_name=f"s{i}", initializer=init) for i in range(4095)}
    eng = EmbeddingEngine(opts)
    out = eng({"f4094": torch.tensor([[3]])})
    assert out["f4094"].tolist() == [[0.5]]
    impl = filter_out_sparse_param(eng)[ht_name(opts["f0"])]
    assert impl.ids().tolist() == encode([3], 4094).tolist()
    assert (impl.ids()[0].item() >> 52) & 0xFFF == 4094


def test_option_validation():
    with pytest.raises(RuntimeError):
        EmbeddingOption(combiner="tile")
    with pytest.raises(RuntimeError):
        EmbeddingOption(combiner="tile", combiner_kwargs={"len": 3})
    with pytest.raises(TypeError):
        EmbeddingOption(initializer="normal")
    with pytest.raises(TypeError):
        EmbeddingOption(initializer=torch.nn.init.normal_)
    with pytest.raises(AssertionError):
        EmbeddingOption(dtype=torch.float32, fp16_enabled=True)
    with pytest.raises(AssertionError):
        EmbeddingOption(combiner="sqrtn")
    with pytest.raises(TypeError):
        EmbeddingEngine({"a": {"embedding_dim": 4}})


def test_two_engines_with_the_same_shared_names_conflict():
    """Q13 (kept): a name registered twice in one process raises."""
    first = EmbeddingEngine({"a": opt("dup")})
    with pytest.raises(ValueError, match="Duplicate hashtable shard name"):
        EmbeddingEngine({"a": opt("dup")})
    assert first is not None


# ------------------------------------------------------------------------------ gradients
def test_one_sgd_step_matches_dense_embedding_bag():
    torch.manual_seed(0)
    opts = {"u": opt("su", init=normal(3, 0.5)), "v": opt("sv", combiner="mean", init=normal(3, 0.5)),
            "w": opt("su", combiner="mean", init=normal(3, 0.5))}
    eng = EmbeddingEngine(opts)
    u_rows, u_w = [[1, 2, 2], [3], [], [1, 4, 5]], [[0.5, 1.0, 2.0], [3.0], [], [1.0, 1.0, 0.25]]
    w_rows, w_w = [[2, 6], [1], [7, 7, 1], [9]], [[1.0, 3.0], [2.0], [0.5, 0.5, 1.0], [4.0]]
    v_ids = torch.tensor([[1, 2, 1], [5, 5, 6], [7, 8, 9], [1, 1, 1]])
    batch = {"u": ragged(u_rows, u_w), "v": v_ids, "w": ragged(w_rows, w_w)}
    out = eng(batch)
    impl = filter_out_sparse_param(eng)[ht_name(opts["u"])]
    assert len(filter_out_sparse_param(eng)) == 1

    # dense reference over the same rows
    bag = torch.nn.EmbeddingBag(impl.embedding.shape[0], 4, mode="sum", include_last_offset=True)
    with torch.no_grad():
        bag.weight.copy_(impl.embedding)
    ru, rv = Ref(eng, opts["u"]), Ref(eng, opts["v"])

    def reference(batch_rows):
        res = {}
        for fea, rows, ws, r in (("u", u_rows, u_w, ru), ("w", w_rows, w_w, ru)):
            flat = [x for x in sum(rows, [])]
            off = torch.tensor([0] + torch.tensor([len(x) for x in rows]).cumsum(0).tolist())
            wt = torch.tensor(sum(ws, []))
            if fea == "w":                     # weighted mean = Σ w e / Σ w
                sums = torch.tensor([sum(x) for x in ws])
                wt = wt / torch.repeat_interleave(sums, off[1:] - off[:-1])
            res[fea] = bag(r.rows(flat), off, per_sample_weights=wt)
        res["v"] = torch.nn.functional.embedding_bag(rv.rows(v_ids.flatten()).view(4, 3), bag.weight, mode="mean")
        return res

    ref = reference(batch)
    for k in ("u", "v", "w"):
        torch.testing.assert_close(out[k], ref[k])
    coef = {k: torch.randn(4, 4) for k in ("u", "v", "w")}
    sum((out[k] * coef[k]).sum() for k in coef).backward()
    sum((ref[k] * coef[k]).sum() for k in coef).backward()

    rows, grads = impl.grad_rows()
    dense = torch.zeros_like(impl.embedding).index_add_(0, rows, grads)
    torch.testing.assert_close(dense, bag.weight.grad)
    assert len(rows.tolist()) == len(set(rows.tolist()))    # one entry per row

    lr = 0.1
    impl.update_slot("embedding", rows, impl.embedding.index_select(0, rows) - lr * grads)
    impl.clear_grad()
    with torch.no_grad():
        bag.weight -= lr * bag.weight.grad
    torch.testing.assert_close(impl.embedding, bag.weight.detach())
    out2 = eng(batch)
    ref2 = reference(batch)
    for k in ("u", "v", "w"):
        torch.testing.assert_close(out2[k], ref2[k])


def test_recis_internals_keep_their_meaning():
    """Issue 12: EmbeddingEngine internals that RecIS code touches hold what RecIS holds."""
    from recis.nn.modules.embedding import DynamicEmbedding
    from recis.nn.modules.embedding_engine import HashTableCoalescedGroup, RuntimeGroupFeature
    a = opt("int_a", combiner="sum")
    b = opt("int_b", combiner="mean", combiner_kwargs=None)
    eng = EmbeddingEngine({"fa": a, "fb": b, "fa2": opt("int_a", combiner="sum")})
    ht = ht_name(a)
    assert list(eng._ht) == [ht] and isinstance(eng._ht[ht], DynamicEmbedding)
    assert eng._fea_to_ht == {"fa": ht, "fb": ht, "fa2": ht}
    group = eng._fea_group[ht]
    assert isinstance(group, HashTableCoalescedGroup)
    assert all(eng._fea_to_group[f] is group for f in ("fa", "fb", "fa2"))
    assert [group.encode_id(f) for f in ("fa", "fb", "fa2")] == [0, 1, 0]
    assert group.runtime_info("fa") == a.runtime_info()
    assert group._emb_opt.shared_name == "int_a"
    assert group._children == {"int_a": 0, "int_b": 1}
    assert group._fea_to_encode_id == {"fa": 0, "fb": 1, "fa2": 0}
    assert group._fea_to_runtime["fb"] == b.runtime_info()
    info = group.children_info("fb")
    assert info == {"combiner": "mean", "dim": 4, "use_weight": True, "combiner_kwargs": None,
                     "admit_hook": None, "fp16_enabled": False}
    # RecIS builds its runtime groups exactly this way
    rg = RuntimeGroupFeature(**info, offset_dtype=eng._offset_dtype)
    assert rg.combiner == "mean" and rg.dim == 4
    assert eng._offset_dtype == torch.int32
    assert set(eng._emb_opts) == {"fa", "fb", "fa2"} and eng._emb_opts["fb"].shared_name == "int_b"
    assert group.embedding_info().children == ["int_a", "int_b"]


def test_group_features_gives_each_call_its_own_groups():
    eng = EmbeddingEngine({"fa": opt("own_a"), "fb": opt("own_b")})
    first = eng.group_features({"fa": ragged([[1, 2], [3]]), "fb": ragged([[4]])})
    second = eng.group_features({"fa": ragged([[5]])})
    (_, g1), = first
    (_, g2), = second
    assert g1 is not g2
    assert g1.present == ["fa", "fb"] and g2.present == ["fa"]
    assert g1.coalesced_ids.numel() == 4 and g2.coalesced_ids.numel() == 1
