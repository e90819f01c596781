"""recis.nn.functional.embedding_ops and ragged_ops.ragged_tile against plain references."""
import pytest
import torch

from recis.nn.functional import embedding_ops as E
from recis.nn.functional.ragged_ops import RaggedTile, ragged_tile


def bags(seed=0, b=40, u=25, d=4, max_len=9, missing=True):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, max_len + 1, (b,), generator=g)
    off = torch.zeros(b + 1, dtype=torch.int64)
    off[1:] = lengths.cumsum(0)
    ri = torch.randint(-1 if missing else 0, u, (int(off[-1]),), generator=g)
    w = torch.rand(int(off[-1]), generator=g, dtype=torch.float64) + 0.1
    emb = torch.randn(u, d, generator=g, dtype=torch.float64)
    return emb, w, ri, off


def ref_reduce(emb, w, ri, off, combiner):
    out = torch.zeros(off.numel() - 1, emb.shape[1], dtype=emb.dtype)
    for bag in range(off.numel() - 1):
        rows, ws = ri[off[bag]:off[bag + 1]], (w[off[bag]:off[bag + 1]] if w is not None
                                               else torch.ones(int(off[bag + 1] - off[bag]), dtype=emb.dtype))
        vecs = torch.stack([emb[r] if r >= 0 else torch.zeros(emb.shape[1], dtype=emb.dtype) for r in rows]) \
            if len(rows) else torch.zeros(0, emb.shape[1], dtype=emb.dtype)
        s = (vecs * ws.unsqueeze(1)).sum(0)
        if combiner == "mean" and len(rows):
            s = s / ws.sum()
        out[bag] = s
    return out


@pytest.mark.parametrize("combiner", ["sum", "mean"])
@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("off_dtype", [torch.int32, torch.int64])
def test_segment_reduce_matches_reference_and_grads(combiner, weighted, off_dtype):
    emb, w, ri, off = bags()
    w = w if weighted else None
    e = emb.clone().requires_grad_()
    out = E.ragged_embedding_segment_reduce(e, w, ri, off.to(off_dtype), combiner)
    torch.testing.assert_close(out, ref_reduce(emb, w, ri, off, combiner))
    e2 = emb.clone().requires_grad_()
    ref = ref_reduce(e2, w, ri, off, combiner)
    g = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, e, g)[0], torch.autograd.grad(ref, e2, g)[0])


def test_weighted_mean_is_weight_sum_normalised_for_long_bags_too():
    # RecIS divides by the count when bags average > 5 ids (Q7); we always divide by sum(w)
    emb = torch.eye(2, dtype=torch.float64)
    ri = torch.tensor([0] * 8 + [1] * 2)
    w = torch.tensor([1.0] * 8 + [4.0] * 2, dtype=torch.float64)
    out = E.ragged_embedding_segment_reduce(emb, w, ri, torch.tensor([0, 10]), "mean")
    torch.testing.assert_close(out, torch.tensor([[8 / 16, 8 / 16]], dtype=torch.float64))


def test_tile_combiner_through_reduce():
    emb, _, ri, off = bags(missing=True)
    out = E.ragged_embedding_segment_reduce(emb, None, ri, off, "tile", {"bs": [20, 20], "tile_len": [3, 5]})
    assert out.shape == (20 * 3 + 20 * 5, emb.shape[1])
    first = out[:60].view(20, 3, -1)
    for bag in range(20):
        for j in range(3):
            pos = off[bag] + j
            expect = emb[ri[pos]] if j < off[bag + 1] - off[bag] and ri[pos] >= 0 else torch.zeros(emb.shape[1], dtype=emb.dtype)
            assert torch.equal(first[bag, j], expect)
    with pytest.raises(RuntimeError, match="tile_len"):
        E.ragged_embedding_segment_reduce(emb, None, ri, off, "tile", {})
    with pytest.raises(ValueError, match="combiner must be one of"):
        E.ragged_embedding_segment_reduce(emb, None, ri, off, "sqrtn")


def test_ragged_tile_function_and_autograd_function_agree():
    emb, _, ri, off = bags(missing=False, b=10)
    t1, t2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    a = ragged_tile([4, 6], [2, 3], ri, off, t1, check_enable=True)
    b = RaggedTile.apply([4, 6], [2, 3], ri, off, t2)
    assert torch.equal(a, b)
    g = torch.randn_like(a)
    torch.testing.assert_close(torch.autograd.grad(a, t1, g)[0], torch.autograd.grad(b, t2, g)[0])
    with pytest.raises(ValueError, match="offset must have"):
        ragged_tile([4, 7], [2, 3], ri, off, t1, check_enable=True)


def test_segment_sum_and_weight_norm_sparse():
    data = torch.randn(5, 3)
    idx = torch.tensor([0, 4, 4, 2])
    seg = torch.tensor([0, 0, 2, 2])
    w = torch.tensor([1., 2., 3., 4.])
    out = E.segment_sum_sparse(data, w, idx, seg, 3)
    torch.testing.assert_close(out[0], data[0] + 2 * data[4])
    assert out[1].abs().sum() == 0
    torch.testing.assert_close(out[2], 3 * data[4] + 4 * data[2])
    torch.testing.assert_close(E.weight_norm_sparse(data, w, seg, 3), torch.tensor([1 / 3, 2 / 3, 3 / 7, 4 / 7]))
    torch.testing.assert_close(E.weight_norm_sparse(data, w, seg, 3, backend="torch"), w / 2)
    mean = E.sparse_embedding_segment_reduce(data, w, idx, seg, 3, "mean")
    torch.testing.assert_close(mean[2], (3 * data[4] + 4 * data[2]) / 7)
    with pytest.raises(ValueError, match="weight must not be None"):
        E.sparse_embedding_segment_reduce(data, None, idx, seg, 3, "sum")


def test_merge_offsets_contract_example():
    out = E.merge_offsets([torch.tensor([0, 2, 5], dtype=torch.int32), torch.tensor([0, 3, 6], dtype=torch.int32)])
    assert out.tolist() == [0, 2, 5, 8, 11] and out.dtype == torch.int32
    assert E.merge_offsets([torch.tensor([0, 2, 5]), torch.tensor([0, 3, 6])], [5, 8]).tolist() == [0, 2, 5, 8, 11]


@pytest.mark.parametrize("world_size", [1, 2, 3, 7])
def test_ids_partition_matches_torch_reference(world_size):
    g = torch.Generator().manual_seed(world_size)
    ids = torch.randint(-(1 << 62), 1 << 62, (500,), generator=g)
    ids = torch.cat([ids, ids[:100]])
    uniq, sizes, rev = E.ids_partition(ids, 65536, world_size)
    assert torch.equal(uniq[rev], ids)
    assert sizes.sum() == uniq.numel() == torch.unique(ids).numel()
    # reference: unique, sort by id & 65535, cut at cumulative part boundaries
    ref = torch.unique(ids)
    ref = ref[torch.argsort(ref & 65535, stable=True)]
    assert torch.equal(uniq, ref)
    m, n = divmod(65536, world_size)
    bounds = torch.tensor([sum(m + (j < n) for j in range(i + 1)) for i in range(world_size)])
    ref_sizes = torch.diff(torch.searchsorted(ref & 65535, bounds), prepend=torch.tensor([0]))
    assert torch.equal(sizes, ref_sizes)
    assert E.partition_boundaries(world_size)[-1] == 65536


def test_ids_encode():
    out = E.ids_encode([torch.tensor([1, -1]), torch.tensor([5])], [0, 3])
    assert out.tolist() == [1, (1 << 52) - 1, 5 | (3 << 52)]
