"""The multi-table csrc ops of the DLRM train-speed work (issue 15 item 4) against pure-PyTorch
references written from their contracts, opcheck, errors, CUDA twins:

* ``multi_table_gather`` (csrc/embedding/multi_gather.cpp): rows of several tables in one tensor;
* ``unique_inverse_multi`` (csrc/embedding/multi_unique.cpp): ``unique_inverse`` of several lists;
* ``sgd_rows_multi_`` (csrc/optim/sgd_rows.cpp): the row-sparse SGD update of several tables,
  bit for bit ATen's ``index_select`` / ``add_(alpha=-lr)`` / ``index_copy_``."""
import pytest
import torch

from recis_compat.ops.multi_table import multi_table_gather, unique_first_seen_many
from recis_compat.ops.id_map import unique_first_seen
from recis_compat.optim.sparse_optim import sgd_rows_


# ----------------------------------------------------------------------------- references
def gather_ref(tables, rows):
    """cat_t(tables[t][rows[t]]) with zero rows where rows[t] < 0."""
    parts = []
    for t, r in zip(tables, rows):
        got = torch.zeros((r.numel(), t.shape[1]), dtype=t.dtype)
        ok = r >= 0
        got[ok] = t[r[ok]]
        parts.append(got)
    return torch.cat(parts)


def unique_ref(ids):
    """(unique in first-occurrence order, inverse) from a dict."""
    seen, uniq, inv = {}, [], []
    for x in ids.tolist():
        if x not in seen:
            seen[x] = len(uniq)
            uniq.append(x)
        inv.append(seen[x])
    return torch.tensor(uniq, dtype=torch.int64), torch.tensor(inv, dtype=torch.int64)


def sgd_ref(table, rows, grad, lr):
    """What SparseSGD did per table before sgd_rows_ (and torch SGD does on a sparse grad)."""
    table.index_copy_(0, rows, table.index_select(0, rows).add_(grad, alpha=-lr))


def _tables(sizes, dim, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, dim, generator=g).to(dtype) for n in sizes]


def _rows(sizes, counts, seed=1, missing=True):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, k in zip(sizes, counts):
        r = torch.randperm(n, generator=g)[:k] if n else torch.zeros(0, dtype=torch.int64)
        if missing and k > 2:
            r[1] = -1
        out.append(r.to(torch.int64))
    return out


# ----------------------------------------------------------------------------- multi_table_gather
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64])
def test_gather_matches_reference(dtype):
    sizes, counts = [50, 7, 0, 300, 1], [20, 7, 0, 250, 1]
    tables = _tables(sizes, 5, dtype)
    rows = _rows(sizes, counts)
    got = multi_table_gather(tables, rows)
    assert got.dtype == dtype and got.shape == (sum(counts), 5)
    assert torch.equal(got, gather_ref(tables, rows))


def test_gather_is_the_per_table_gather_bit_for_bit_over_many_rows():
    sizes = [100_000, 3, 20_000]
    tables = _tables(sizes, 32)
    g = torch.Generator().manual_seed(3)
    rows = [torch.randint(-1, n, (k,), generator=g) for n, k in zip(sizes, (40_000, 9, 15_000))]
    got = multi_table_gather(tables, rows)
    want = torch.cat([t.index_select(0, r.clamp(min=0)).masked_fill_((r < 0).unsqueeze(1), 0)
                      for t, r in zip(tables, rows)])
    assert torch.equal(got, want)


def test_gather_of_an_empty_table_with_absent_rows_is_zeros():
    got = multi_table_gather([torch.zeros(0, 4), torch.ones(2, 4)], [torch.tensor([-1, -1]), torch.tensor([1])])
    assert torch.equal(got, torch.cat([torch.zeros(2, 4), torch.ones(1, 4)]))


def test_gather_bad_inputs_name_the_op_and_the_table():
    t, r = [torch.zeros(3, 4)], [torch.tensor([0])]
    with pytest.raises(RuntimeError, match=r"multi_table_gather: rows\[1\] holds row 2 but tables\[1\] has only 2"):
        multi_table_gather(t + [torch.zeros(2, 4)], r + [torch.tensor([0, 2])])
    with pytest.raises(RuntimeError, match=r"multi_table_gather: tables\[1\] must be 2-D \[rows, 4\]"):
        multi_table_gather(t + [torch.zeros(2, 5)], r + [torch.tensor([0])])
    with pytest.raises(RuntimeError, match=r"multi_table_gather: tables\[1\] is Double but tables\[0\] is Float"):
        multi_table_gather(t + [torch.zeros(2, 4, dtype=torch.float64)], r + [torch.tensor([0])])
    with pytest.raises(RuntimeError, match=r"multi_table_gather: rows\[0\] must be 1-D int64"):
        multi_table_gather(t, [torch.tensor([0], dtype=torch.int32)])
    with pytest.raises(RuntimeError, match="got 1 tables and 2 row lists"):
        multi_table_gather(t, r + r)
    with pytest.raises(ValueError, match="needs at least one table"):
        multi_table_gather([], [])


def test_gather_opcheck():
    tables = _tables([6, 4], 3)
    torch.library.opcheck(torch.ops.recis_compat.multi_table_gather.default,
                          (tables, [torch.tensor([5, -1, 0]), torch.tensor([3])]))


# ----------------------------------------------------------------------------- unique_inverse_multi
@pytest.mark.parametrize("threads", [1, 2])
def test_unique_many_equals_unique_first_seen_per_list(threads):
    g = torch.Generator().manual_seed(4)
    lists = [torch.randint(0, 50, (n,), generator=g) for n in (16_384, 0, 2048, 1, 7, 30_000)]
    lists[3] = torch.tensor([-(1 << 63)])
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        uniq, inverse = unique_first_seen_many(lists)
    finally:
        torch.set_num_threads(old)
    assert len(uniq) == len(inverse) == len(lists)
    for ids, u, inv in zip(lists, uniq, inverse):
        ref_u, ref_inv = unique_ref(ids)
        assert torch.equal(u, ref_u) and torch.equal(inv, ref_inv)
        want_u, want_inv = unique_first_seen(ids)
        assert torch.equal(u, want_u) and torch.equal(inv, want_inv)


def test_unique_many_of_no_list_and_bad_input():
    assert unique_first_seen_many([]) == ([], [])
    with pytest.raises(RuntimeError, match=r"unique_inverse_multi: ids\[1\] must be a 1-D int64 tensor"):
        torch.ops.recis_compat.unique_inverse_multi([torch.tensor([1]), torch.tensor([1.0])])


def test_unique_many_opcheck():
    torch.library.opcheck(torch.ops.recis_compat.unique_inverse_multi.default,
                          ([torch.tensor([3, 1, 3, 2]), torch.tensor([5, 5])],),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


# ----------------------------------------------------------------------------- sgd_rows_multi_
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lr", [0.1, 24.0, 1e-3])
def test_sgd_rows_is_the_aten_update_bit_for_bit(dtype, lr):
    sizes, counts = [1000, 5, 0, 40_000, 3], [700, 5, 0, 30_000, 1]
    tables = _tables(sizes, 33, dtype)           # 33: a row length off the vector width
    rows = _rows(sizes, counts, missing=False)
    g = torch.Generator().manual_seed(7)
    grads = [torch.randn(r.numel(), 33, generator=g).to(dtype) for r in rows]
    want = [t.clone() for t in tables]
    for t, r, gr in zip(want, rows, grads):
        sgd_ref(t, r, gr, lr)
    sgd_rows_(tables, rows, grads, lr)
    for t, w in zip(tables, want):
        assert torch.equal(t, w)


def test_sgd_rows_half_tables_take_the_aten_path():
    tables = _tables([10, 10], 4)
    tables[1] = tables[1].to(torch.bfloat16)
    rows = [torch.tensor([1, 4]), torch.tensor([0, 9])]
    grads = [torch.ones(2, 4), torch.ones(2, 4, dtype=torch.bfloat16)]
    want = [t.clone() for t in tables]
    for t, r, gr in zip(want, rows, grads):
        sgd_ref(t, r, gr, 0.5)
    sgd_rows_(tables, rows, grads, 0.5)
    assert all(torch.equal(t, w) for t, w in zip(tables, want))


def test_sgd_rows_bad_inputs_change_nothing_and_name_the_table():
    tables = _tables([4, 3], 2)
    before = [t.clone() for t in tables]
    op = torch.ops.recis_compat.sgd_rows_multi_
    with pytest.raises(RuntimeError, match=r"sgd_rows_multi_: rows\[1\] holds row 3 but tables\[1\] has rows 0..2"):
        op(tables, [torch.tensor([0]), torch.tensor([0, 3])], [torch.ones(1, 2), torch.ones(2, 2)], 0.1)
    with pytest.raises(RuntimeError, match=r"sgd_rows_multi_: grads\[0\] must be \[1, 2\]"):
        op(tables[:1], [torch.tensor([0])], [torch.ones(2, 2)], 0.1)
    with pytest.raises(RuntimeError, match=r"sgd_rows_multi_: grads\[0\] is Double but tables\[0\] is Float"):
        op(tables[:1], [torch.tensor([0])], [torch.ones(1, 2, dtype=torch.float64)], 0.1)
    with pytest.raises(RuntimeError, match=r"sgd_rows_multi_: tables\[0\] must be float32 or float64"):
        op([torch.ones(2, 2, dtype=torch.bfloat16)], [torch.tensor([0])], [torch.ones(1, 2, dtype=torch.bfloat16)], 0.1)
    with pytest.raises(RuntimeError, match=r"sgd_rows_multi_: tables\[0\] must be contiguous"):
        op([torch.ones(2, 4)[:, ::2]], [torch.tensor([0])], [torch.ones(1, 2)], 0.1)
    assert all(torch.equal(t, b) for t, b in zip(tables, before))


def test_sgd_rows_opcheck():
    tables = _tables([6, 4], 3)
    torch.library.opcheck(torch.ops.recis_compat.sgd_rows_multi_.default,
                          (tables, [torch.tensor([5, 0]), torch.tensor([3])], [torch.ones(2, 3), torch.ones(1, 3)], 0.25))


# ----------------------------------------------------------------------------- CUDA twins
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    tables = _tables([50, 7], 4)
    rows = _rows([50, 7], [20, 7])
    got = multi_table_gather([t.cuda() for t in tables], [r.cuda() for r in rows])
    assert torch.equal(got.cpu(), multi_table_gather(tables, rows))
    lists = [torch.randint(0, 9, (n,)) for n in (100, 3)]
    gu, gi = unique_first_seen_many([x.cuda() for x in lists])
    cu, ci = unique_first_seen_many(lists)
    assert all(torch.equal(a.cpu(), b) for a, b in zip(gu + gi, cu + ci))
    rows = _rows([50, 7], [20, 7], missing=False)
    grads = [torch.randn(r.numel(), 4) for r in rows]
    gpu = [t.cuda() for t in tables]
    sgd_rows_(gpu, [r.cuda() for r in rows], [g.cuda() for g in grads], 0.1)
    sgd_rows_(tables, rows, grads, 0.1)
    assert all(torch.equal(a.cpu(), b) for a, b in zip(gpu, tables))
