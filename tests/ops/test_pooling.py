"""pooled_sum (embedding_bag forward + csrc pooled_sum_backward) against a pure-PyTorch reference."""
import pytest
import torch

from recis_compat.ops.pooling import pooled_sum
from reference_kernels import pooled_sum_ref


def case(seed=0, U=7, D=5, B=6, dtype=torch.float64, missing=True, weighted=True):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 5, (B,), generator=g)
    lengths[1] = 0                                              # an empty bag
    off = torch.zeros(B + 1, dtype=torch.int64)
    off[1:] = torch.cumsum(lengths, 0)
    n = int(off[-1])
    index = torch.randint(0, U, (n,), generator=g)
    if missing and n > 2:
        index[2] = -1
    emb = torch.randn(U, D, dtype=dtype, generator=g)
    w = torch.rand(n, dtype=dtype, generator=g) + 0.5 if weighted else None
    return emb, index, off, w


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("missing", [False, True])
@pytest.mark.parametrize("off_dtype", [torch.int32, torch.int64])
def test_forward_and_backward_match_reference(weighted, missing, off_dtype):
    emb, index, off, w = case(weighted=weighted, missing=missing)
    off = off.to(off_dtype)
    a = emb.clone().requires_grad_()
    b = emb.clone().requires_grad_()
    wa = w.clone().requires_grad_() if w is not None else None
    wb = w.clone().requires_grad_() if w is not None else None
    out_a = pooled_sum(a, index, off, wa)
    out_b = pooled_sum_ref(b, index, off, wb)
    torch.testing.assert_close(out_a, out_b)
    g = torch.randn_like(out_a)
    out_a.backward(g)
    out_b.backward(g)
    torch.testing.assert_close(a.grad, b.grad)
    if w is not None:
        torch.testing.assert_close(wa.grad, wb.grad)


def test_duplicates_accumulate_and_float32():
    emb = torch.randn(3, 4, requires_grad=True)
    index = torch.tensor([1, 1, 1, 2])
    off = torch.tensor([0, 3, 4])
    pooled_sum(emb, index, off).sum().backward()
    assert emb.grad[1].tolist() == [3.0] * 4 and emb.grad[2].tolist() == [1.0] * 4 and emb.grad[0].tolist() == [0.0] * 4


def test_empty_table_and_empty_input():
    emb = torch.zeros(0, 4, requires_grad=True)
    out = pooled_sum(emb, torch.tensor([-1, -1]), torch.tensor([0, 1, 2]))
    assert out.shape == (2, 4) and not out.any()
    out2 = pooled_sum(torch.randn(3, 4), torch.zeros(0, dtype=torch.int64), torch.tensor([0, 0]))
    assert out2.shape == (1, 4) and not out2.any()


def test_backward_op_errors_name_the_op():
    with pytest.raises(RuntimeError, match="pooled_sum_backward.*out of range"):
        torch.ops.recis_compat.pooled_sum_backward(torch.ones(1, 2), torch.tensor([5]), torch.tensor([0, 1]), None, 3)
    with pytest.raises(RuntimeError, match="pooled_sum_backward.*offsets"):
        torch.ops.recis_compat.pooled_sum_backward(torch.ones(1, 2), torch.tensor([0]), torch.tensor([0, 4]), None, 3)


def test_opcheck():
    emb, index, off, w = case(dtype=torch.float32, missing=True)
    grad = torch.randn(off.numel() - 1, emb.shape[1])
    torch.library.opcheck(torch.ops.recis_compat.pooled_sum_backward.default, (grad, index, off, w, emb.shape[0]))
    torch.library.opcheck(torch.ops.recis_compat.pooled_sum_backward.default, (grad, index, off, None, emb.shape[0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_twin_matches_cpu():
    emb, index, off, w = case(dtype=torch.float32)
    grad = torch.randn(off.numel() - 1, emb.shape[1])
    cpu = torch.ops.recis_compat.pooled_sum_backward(grad, index, off, w, emb.shape[0])
    gpu = torch.ops.recis_compat.pooled_sum_backward(grad.cuda(), index.cuda(), off.cuda(), w.cuda(), emb.shape[0])
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-6)


def _serial_scatter(grad_rows, index, weight, num_rows):
    """Position-order scatter-add in Python (the order the kernels promise for every row)."""
    out = torch.zeros(num_rows, grad_rows.shape[1], dtype=grad_rows.dtype)
    for k in range(index.numel()):
        r = int(index[k])
        if r >= 0:
            out[r] += grad_rows[k] * (weight[k] if weight is not None else 1)
    return out


@pytest.mark.parametrize("weighted", [False, True])
def test_backward_is_bit_identical_across_thread_counts(weighted):
    """Large enough to run on several threads (row ownership): every row is still summed in
    position order, so 1 and 2+ threads and a serial position-order loop agree exactly."""
    g = torch.Generator().manual_seed(5)
    B, U, D = 3000, 400, 16
    lengths = torch.randint(0, 6, (B,), generator=g)
    off = torch.zeros(B + 1, dtype=torch.int64)
    off[1:] = torch.cumsum(lengths, 0)
    n = int(off[-1])
    index = torch.randint(-1, U, (n,), generator=g)
    grad = torch.randn(B, D, generator=g)
    w = torch.rand(n, generator=g) if weighted else None
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.recis_compat.pooled_sum_backward(grad, index, off, w, U)
        torch.set_num_threads(max(2, prev))
        many = torch.ops.recis_compat.pooled_sum_backward(grad, index, off, w, U)
    finally:
        torch.set_num_threads(prev)
    assert torch.equal(one, many)
    bag_of = torch.repeat_interleave(torch.arange(B), lengths)
    assert torch.equal(one, _serial_scatter(grad[bag_of], index, w, U))


@pytest.mark.parametrize("weighted", [False, True])
def test_pooled_sum_is_a_registered_op_with_autograd(weighted):
    """pooled_sum is torch.ops.recis_compat.pooled_sum with a fake impl and register_autograd
    (recis_compat/ops/pooling.py): opcheck runs schema, fake, autograd registration and aot checks."""
    emb, index, off, w = case(dtype=torch.float64, missing=True, weighted=weighted)
    emb.requires_grad_()
    if w is not None:
        w.requires_grad_()
    torch.library.opcheck(torch.ops.recis_compat.pooled_sum.default, (emb, index, off, w))
    out = torch.ops.recis_compat.pooled_sum(emb, index, off, w)
    assert out.grad_fn is not None
    torch.testing.assert_close(out, pooled_sum_ref(emb, index, off, w))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gather_rows_matches_index_select_forward_and_backward(dtype):
    """gather_rows: emb[index] with repeats; its gradient sums the repeated rows in position
    order (the serial scatter) and equals index_select's."""
    from recis_compat.ops.pooling import gather_rows
    g = torch.Generator().manual_seed(5)
    emb = torch.randn(40, 6, generator=g, dtype=dtype, requires_grad=True)
    index = torch.randint(0, 40, (300,), generator=g)
    grad = torch.randn(300, 6, generator=g, dtype=dtype)
    out = gather_rows(emb, index)
    torch.testing.assert_close(out, emb.detach().index_select(0, index), rtol=0, atol=0)
    (ours,) = torch.autograd.grad(out, emb, grad)
    (ref,) = torch.autograd.grad(emb.index_select(0, index), emb, grad)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(ours, _serial_scatter(grad, index, None, 40), rtol=0, atol=0)
    empty = gather_rows(emb, torch.zeros(0, dtype=torch.int64))
    assert empty.shape == (0, 6)


def test_gather_rows_opcheck():
    emb = torch.randn(7, 3, requires_grad=True)
    torch.library.opcheck(torch.ops.recis_compat.gather_rows.default, (emb, torch.tensor([0, 6, 6, 2])))
