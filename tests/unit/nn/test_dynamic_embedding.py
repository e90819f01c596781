"""recis.nn.DynamicEmbedding (RecIS 1.0; see COMPATIBILITY.md): pooling of dense and ragged
inputs against pure-PyTorch references built from the table's own rows."""
import pytest
import torch

from recis.features import FeatureEngine, SelectField, SequenceTruncate
from recis.features.feature import Feature
from recis.nn import DynamicEmbedding, EmbeddingOption
from recis.nn.hashtable_hook import AdmitHook
from recis.nn.initializers import ConstantInitializer, NormalInitializer
from recis.ragged.tensor import RaggedTensor
from reference_kernels import tile_ref

DIM = 3


def make(name, combiner="sum", dim=DIM, seed=0, **kw):
    init = kw.pop("initializer", None) or NormalInitializer(generator=torch.Generator().manual_seed(seed))
    return DynamicEmbedding(EmbeddingOption(embedding_dim=dim, shared_name=name, combiner=combiner,
                                            initializer=init, **kw))


def table_rows(de, ids):
    """``[N, dim]`` stored rows of ``ids`` via the public ids_map()/embeddings() (zeros if absent)."""
    ht = de.hashtable
    m = dict(zip(*(t.tolist() for t in ht.ids_map())))
    emb = ht.embeddings()
    return torch.stack([emb[m[int(i)]] if int(i) in m else torch.zeros(emb.shape[1]) for i in ids]) \
        if len(ids) else torch.zeros(0, emb.shape[1] if emb.dim() > 1 else DIM)


def pool_ref(de, ids, offsets, weights, combiner):
    """Σ w·e (sum) or Σ w·e / Σ w (mean; plain mean when unweighted) per bag; empty bags -> 0."""
    ids, offsets = list(map(int, ids)), list(map(int, offsets))
    out = []
    for b in range(len(offsets) - 1):
        bag = ids[offsets[b]:offsets[b + 1]]
        if not bag:
            out.append(torch.zeros(de.hashtable.embedding_shape[0]))
            continue
        w = torch.ones(len(bag)) if weights is None else torch.as_tensor(weights[offsets[b]:offsets[b + 1]],
                                                                         dtype=torch.float32)
        s = (table_rows(de, bag) * w.unsqueeze(1)).sum(0)
        out.append(s / w.sum() if combiner == "mean" else s)
    return torch.stack(out)


def ragged(rows, weights=None, odt=torch.int32):
    vals = torch.tensor([x for r in rows for x in r], dtype=torch.int64)
    off = torch.tensor([0] + list(torch.tensor([len(r) for r in rows]).cumsum(0).tolist()), dtype=odt)
    w = None if weights is None else torch.tensor([x for r in weights for x in r], dtype=torch.float32)
    return RaggedTensor(vals, off, weight=w)


ROWS = [[1, 2, 2], [], [3, 1, 4, 5, 9, 2, 6], [7]]
WEIGHTS = [[0.5, 2.0, 1.0], [], [1.0, 0.25, 3.0, 1.5, 0.5, 2.0, 1.0], [4.0]]


def flat(rows):
    return [x for r in rows for x in r]


def offsets_of(rows):
    return [0] + torch.tensor([len(r) for r in rows]).cumsum(0).tolist()


# ------------------------------------------------------------------------------ dense input
@pytest.mark.parametrize("combiner", ["sum", "mean"])
def test_dense_input(combiner):
    de = make("de_dense", combiner)
    ids = torch.tensor([[1, 2, 1], [3, 4, 5]])
    out = de(ids)
    assert out.shape == (2, DIM) and out.requires_grad
    ref = pool_ref(de, ids.flatten(), [0, 3, 6], None, combiner)
    torch.testing.assert_close(out, ref)
    assert sorted(de.hashtable.ids().tolist()) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("combiner", ["sum", "mean"])
def test_dense_input_with_input_weights(combiner):
    de = make("de_dense_w", combiner)
    ids = torch.tensor([[1, 2, 1], [3, 4, 5]])
    w = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 4.0]])
    out = de(ids, input_weights=w)
    torch.testing.assert_close(out, pool_ref(de, ids.flatten(), [0, 3, 6], w.flatten(), combiner))
    with pytest.raises(ValueError):
        de(ids, input_weights=torch.ones(5))


# ------------------------------------------------------------------------------ ragged 2-D
@pytest.mark.parametrize("combiner", ["sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("odt", [torch.int32, torch.int64])
def test_ragged_2d(combiner, weighted, odt):
    de = make("de_rag", combiner)
    rt = ragged(ROWS, WEIGHTS if weighted else None, odt)
    out = de(rt)
    assert out.shape == (4, DIM)
    ref = pool_ref(de, flat(ROWS), offsets_of(ROWS), flat(WEIGHTS) if weighted else None, combiner)
    torch.testing.assert_close(out, ref)
    assert out[1].tolist() == [0.0] * DIM                  # empty bag


def test_weighted_mean_divides_by_weight_sum_for_long_bags():
    """Q7: always Σ w·e / Σ w (RecIS divides by the count when bags average more than 5 ids)."""
    de = make("de_long", "mean", initializer=ConstantInitializer(init_val=1.0))
    rows = [list(range(10)), list(range(10, 22))]
    w = [[2.0] * 10, [0.5] * 12]
    out = de(ragged(rows, w))
    torch.testing.assert_close(out, torch.ones(2, DIM))    # count division would give 2 and 0.5


def test_use_weight_false_ignores_weights():
    de = make("de_nouse", "sum", use_weight=False)
    rt = ragged(ROWS, WEIGHTS)
    out = de(rt)
    ref = pool_ref(de, flat(ROWS), offsets_of(ROWS), None, "sum")
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(de(rt, input_weights=torch.full((len(flat(ROWS)),), 3.0)), ref)


def test_input_weights_override_ragged_weights():
    de = make("de_override", "sum")
    rt = ragged(ROWS, WEIGHTS)
    other = torch.arange(1, len(flat(ROWS)) + 1, dtype=torch.float32)
    out = de(rt, input_weights=other)
    torch.testing.assert_close(out, pool_ref(de, flat(ROWS), offsets_of(ROWS), other, "sum"))
    assert not torch.allclose(out, pool_ref(de, flat(ROWS), offsets_of(ROWS), flat(WEIGHTS), "sum"))


def test_all_bags_empty_gives_zeros():
    de = make("de_empty", "mean")
    rt = RaggedTensor(torch.zeros(0, dtype=torch.int64), torch.tensor([0, 0, 0], dtype=torch.int32))
    out = de(rt)
    assert out.shape == (2, DIM) and torch.equal(out, torch.zeros(2, DIM))


def test_gradient_matches_reference():
    de = make("de_grad", "mean")
    rt = ragged(ROWS, WEIGHTS)
    out = de(rt)
    de.hashtable.clear_grad()
    out = de(rt)
    coef = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * coef).sum().backward()
    ids, rows = de.hashtable.ids_map()
    leaf = de.hashtable.embeddings().clone().requires_grad_()
    m = dict(zip(ids.tolist(), rows.tolist()))
    ref = []
    for b in range(len(ROWS)):
        if not ROWS[b]:
            ref.append(torch.zeros(DIM))
            continue
        w = torch.tensor(WEIGHTS[b])
        e = leaf[torch.tensor([m[i] for i in ROWS[b]])]
        ref.append((e * w.unsqueeze(1)).sum(0) / w.sum())
    (torch.stack(ref) * coef).sum().backward()
    torch.testing.assert_close(de.hashtable.grad().to_dense(), leaf.grad)


# ------------------------------------------------------------------------------ ragged 3-D
def seq_engine(seq_len):
    return FeatureEngine([Feature("seq").add_op(SelectField("seq")).add_op(
        SequenceTruncate(seq_len=seq_len, n_dims=3, check_length=False, truncate_side="right"))])


@pytest.mark.parametrize("combiner", ["sum", "mean"])
def test_padded_3d_ragged_from_sequence_truncate(combiner):
    # row 0: [[1], [2, 3], [4], [5]]  row 1: [[6, 6]]  -> padded to L=3 lists per row
    raw = RaggedTensor(torch.tensor([1, 2, 3, 4, 5, 6, 6]),
                       [torch.tensor([0, 4, 5]), torch.tensor([0, 1, 3, 4, 5, 7])])
    rt = seq_engine(3)({"seq": raw})["seq"]
    de = make("de_3d", combiner)
    out = de(rt)
    assert out.shape == (2, 3, DIM)
    bags = [[1], [2, 3], [4], [6, 6], [], []]
    ref = pool_ref(de, flat(bags), offsets_of(bags), None, combiner).view(2, 3, DIM)
    torch.testing.assert_close(out, ref)
    assert torch.equal(out[1, 1:], torch.zeros(2, DIM))


def test_padded_3d_ragged_built_by_hand():
    rt = RaggedTensor(torch.tensor([1, 2, 3, 4]), [torch.tensor([0, 2, 4]), torch.tensor([0, 1, 1, 3, 4])],
                      weight=torch.tensor([1.0, 2.0, 3.0, 4.0]))
    de = make("de_3d_hand", "sum")
    out = de(rt)
    assert out.shape == (2, 2, DIM)
    ref = pool_ref(de, [1, 2, 3, 4], [0, 1, 1, 3, 4], [1.0, 2.0, 3.0, 4.0], "sum").view(2, 2, DIM)
    torch.testing.assert_close(out, ref)


def test_unpadded_3d_raises():
    rt = RaggedTensor(torch.arange(10), [torch.tensor([0, 2, 3]), torch.tensor([0, 2, 4, 5, 7, 10])])
    de = make("de_unpadded")
    with pytest.raises(RuntimeError, match=r"de_unpadded.*RaggedTensor must pad before lookup"):
        de(rt)


# ------------------------------------------------------------------------------ tile
def tile_expected(de, rows, tile_len, leaf=None):
    """tile_ref over the table rows of the bag ids (leaf: a differentiable copy of embeddings())."""
    ids, r = de.hashtable.ids_map()
    m = dict(zip(ids.tolist(), r.tolist()))
    emb = de.hashtable.embeddings() if leaf is None else leaf
    index = torch.tensor([m.get(i, -1) for i in flat(rows)], dtype=torch.int64)
    return tile_ref(emb, index, torch.tensor(offsets_of(rows)), tile_len)


def test_tile_ragged_and_gradient_to_first_ids_only():
    de = make("de_tile", "tile", combiner_kwargs={"tile_len": 3})
    rt = ragged(ROWS, WEIGHTS)                      # weights are ignored by tile
    out = de(rt)
    assert out.shape == (4, 3, DIM)
    torch.testing.assert_close(out, tile_expected(de, ROWS, 3))
    assert torch.equal(out[1], torch.zeros(3, DIM))             # empty bag
    assert torch.equal(out[3, 1:], torch.zeros(2, DIM))         # bag of one id
    de.hashtable.clear_grad()
    coef = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    (de(rt) * coef).sum().backward()
    leaf = de.hashtable.embeddings().clone().requires_grad_()
    (tile_expected(de, ROWS, 3, leaf) * coef).sum().backward()
    torch.testing.assert_close(de.hashtable.grad().to_dense(), leaf.grad)
    # ids only seen past position T (5, 9, 6 in bag 2) get no gradient
    m = dict(zip(*(t.tolist() for t in de.hashtable.ids_map())))
    g = de.hashtable.grad().to_dense()
    for i in (5, 9, 6):
        assert torch.equal(g[m[i]], torch.zeros(DIM))
    assert not torch.equal(g[m[4]], torch.zeros(DIM))


def test_tile_dense_input():
    de = make("de_tile_dense", "tile", combiner_kwargs={"tile_len": 2})
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    out = de(ids)
    assert out.shape == (2, 2 * DIM)
    rows = ids.tolist()
    torch.testing.assert_close(out, tile_expected(de, rows, 2).reshape(2, 2 * DIM))


def test_tile_3d_input_is_an_error():
    rt = RaggedTensor(torch.tensor([1, 2, 3, 4]), [torch.tensor([0, 2, 4]), torch.tensor([0, 1, 1, 3, 4])])
    de = make("de_tile_3d", "tile", combiner_kwargs={"tile_len": 2})
    with pytest.raises(RuntimeError, match="de_tile_3d"):
        de(rt)


# ------------------------------------------------------------------------------ options, errors
def test_trainable_false_detaches_but_inserts():
    de = make("de_frozen", "sum", trainable=False)
    out = de(torch.tensor([[1, 2]]))
    assert not out.requires_grad and out.grad_fn is None
    assert sorted(de.hashtable.ids().tolist()) == [1, 2]


def test_eval_mode_inserts_nothing():
    de = make("de_eval", "sum")
    de(torch.tensor([[1]]))
    de.eval()
    out = de(torch.tensor([[1, 99]]))
    torch.testing.assert_close(out, table_rows(de, [1]))
    assert de.hashtable.ids().tolist() == [1]


def test_eval_mode_on_a_fresh_table_gives_zeros():
    de = make("de_eval_fresh", "sum")
    de.eval()
    assert torch.equal(de(torch.tensor([[1, 2]])), torch.zeros(1, DIM))


def test_readonly_admit_hook_option():
    de = make("de_ro", "sum", admit_hook=AdmitHook("ReadOnly"))
    de.hashtable.insert(torch.tensor([1]), torch.ones(1, DIM))
    out = de(torch.tensor([[1, 2], [2, 2]]))
    assert out.tolist() == [[1.0] * DIM, [0.0] * DIM]
    assert de.hashtable.ids().tolist() == [1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.int32])
def test_wrong_id_dtype_names_the_table(dtype):
    de = make("de_dtype")
    with pytest.raises(TypeError, match="de_dtype"):
        de(torch.tensor([[1, 2]], dtype=dtype))
    with pytest.raises(TypeError, match="de_dtype"):
        de(RaggedTensor(torch.tensor([1, 2], dtype=dtype), torch.tensor([0, 2])))


def test_other_bad_inputs():
    de = make("de_bad")
    with pytest.raises(TypeError):
        de(torch.tensor([[1, 2]]).to_sparse())
    with pytest.raises(IndexError):
        de(torch.tensor([1, 2]))
    with pytest.raises(TypeError):
        DynamicEmbedding({"embedding_dim": 3})


def test_same_shared_name_twice_raises():
    first = make("de_twice")
    with pytest.raises(ValueError, match="Duplicate hashtable shard name"):
        make("de_twice")
    assert first.hashtable.name == "de_twice"
