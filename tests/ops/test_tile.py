"""tile_forward / tile_backward: reference equality, gradients, opcheck, errors, CUDA twin."""
import pytest
import torch

from recis_compat.ops.tile import tile
from reference_kernels import tile_ref


def random_case(b=50, u=30, d=4, max_len=12, dtype=torch.float32, off_dtype=torch.int64, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, max_len + 1, (b,), generator=g)
    offsets = torch.zeros(b + 1, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    index = torch.randint(-1, u, (int(offsets[-1]),), generator=g)     # -1 = missing id
    emb = torch.randn(u, d, generator=g, dtype=torch.float64).to(dtype)
    return emb, index, offsets.to(off_dtype)


@pytest.mark.parametrize("tile_len", [1, 5, 20])
@pytest.mark.parametrize("off_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_forward_backward_match_reference(tile_len, off_dtype, dtype):
    emb, index, offsets = random_case(dtype=dtype, off_dtype=off_dtype)
    e1 = emb.clone().requires_grad_()
    e2 = emb.clone().requires_grad_()
    out, ref = tile(e1, index, offsets, tile_len), tile_ref(e2, index, offsets, tile_len)
    assert out.shape == (offsets.numel() - 1, tile_len, emb.shape[1])
    assert torch.equal(out, ref)
    grad = torch.randn(out.shape, dtype=torch.float64).to(dtype)
    (g1,) = torch.autograd.grad(out, e1, grad)
    (g2,) = torch.autograd.grad(ref, e2, grad)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-6
    torch.testing.assert_close(g1, g2, atol=tol, rtol=tol)


def test_semantics_by_hand():
    emb = torch.arange(12.).view(6, 2)
    index = torch.tensor([5, 0, 1, 2, 3, 4])
    offsets = torch.tensor([0, 1, 1, 6])
    out = tile(emb, index, offsets, 3)
    assert out[0].tolist() == [[10., 11.], [0., 0.], [0., 0.]]     # short bag: zero padded
    assert out[1].abs().sum() == 0                                   # empty bag
    assert out[2].tolist() == [[0., 1.], [2., 3.], [4., 5.]]         # long bag: first 3 ids
    e = emb.clone().requires_grad_()
    tile(e, index, offsets, 3).sum().backward()
    assert e.grad[:, 0].tolist() == [1., 1., 1., 0., 0., 1.]         # ids 3, 4 are past tile_len


def test_duplicate_rows_accumulate_gradient():
    emb = torch.zeros(2, 3, requires_grad=True)
    out = tile(emb, torch.tensor([1, 1, 1, 0]), torch.tensor([0, 2, 4]), 2)
    out.backward(torch.ones_like(out))
    assert emb.grad.tolist() == [[1., 1., 1.], [3., 3., 3.]]


def test_gradcheck():
    emb, index, offsets = random_case(b=6, u=5, d=2, max_len=4, dtype=torch.float64, seed=3)
    emb.requires_grad_()
    assert torch.autograd.gradcheck(lambda e: tile(e, index, offsets, 3), (emb,))


def test_opcheck():
    emb, index, offsets = random_case(b=8, u=6, d=3, max_len=5)
    torch.library.opcheck(torch.ops.recis_compat.tile_forward.default, (emb, index, offsets, 4))
    grad = torch.randn(8, 4, 3)
    torch.library.opcheck(torch.ops.recis_compat.tile_backward.default, (grad, index, offsets, 6))


def test_bad_inputs():
    emb, index, offsets = random_case(b=4, u=5)
    with pytest.raises(ValueError, match="tile_len must be > 0"):
        tile(emb, index, offsets, 0)
    with pytest.raises(RuntimeError, match="index must be a 1-D int64"):
        tile(emb, index.int(), offsets, 2)
    with pytest.raises(RuntimeError, match="tile_forward: index 7 out of range: emb has only 5 rows"):
        tile(emb, torch.tensor([7]), torch.tensor([0, 1]), 2)
    with pytest.raises(RuntimeError, match="offsets run from"):
        tile(emb, torch.tensor([1]), torch.tensor([0, 3]), 2)
    with pytest.raises(RuntimeError, match="emb must be 2-D"):
        tile(emb.view(-1), index, offsets, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_cuda_twin_matches_cpu(dtype):
    emb, index, offsets = random_case(dtype=dtype)
    out_cpu = tile(emb, index, offsets, 7)
    out_gpu = tile(emb.cuda(), index.cuda(), offsets.cuda(), 7)
    assert torch.equal(out_gpu.cpu(), out_cpu)
    grad = torch.randn(out_cpu.shape).to(dtype)
    g_cpu = torch.ops.recis_compat.tile_backward(grad, index, offsets, emb.shape[0])
    g_gpu = torch.ops.recis_compat.tile_backward(grad.cuda(), index.cuda(), offsets.cuda(), emb.shape[0])
    torch.testing.assert_close(g_gpu.cpu(), g_cpu, atol=1e-2, rtol=1e-2)


def test_backward_is_bit_identical_across_thread_counts():
    """tile_backward with row ownership: 1 and 2+ threads give the same bits (position order)."""
    g = torch.Generator().manual_seed(9)
    B, T, U, D = 300, 40, 500, 16
    lengths = torch.randint(0, 60, (B,), generator=g)
    off = torch.zeros(B + 1, dtype=torch.int64)
    off[1:] = torch.cumsum(lengths, 0)
    index = torch.randint(-1, U, (int(off[-1]),), generator=g)
    grad = torch.randn(B, T, D, generator=g)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.recis_compat.tile_backward(grad, index, off, U)
        torch.set_num_threads(max(2, prev))
        many = torch.ops.recis_compat.tile_backward(grad, index, off, U)
    finally:
        torch.set_num_threads(prev)
    assert torch.equal(one, many)
    ref = torch.zeros(U, D)
    for b in range(B):
        for j in range(min(int(lengths[b]), T)):
            r = int(index[int(off[b]) + j])
            if r >= 0:
                ref[r] += grad[b, j]
    assert torch.equal(one, ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_twins_share_their_argument_checks(device):
    """csrc/embedding/tile_checks.h: both devices reject the same inputs with the same errors
    (the CUDA backward did not check the row range before)."""
    grad = torch.ones(1, 2, 3, device=device)
    index, offsets = torch.tensor([9], device=device), torch.tensor([0, 1], device=device)
    with pytest.raises(RuntimeError, match=r"tile_backward: index 9 out of range: the gradient \(num_rows\) "
                                           r"has only 4 rows"):
        torch.ops.recis_compat.tile_backward(grad, index, offsets, 4)
    with pytest.raises(RuntimeError, match=r"pooled_sum_backward: weight must be \[1\]"):
        torch.ops.recis_compat.pooled_sum_backward(grad[:, 0], torch.tensor([0], device=device), offsets,
                                                   torch.ones(2, device=device), 4)
