"""``sparse_rows_rotate_``: the no-arithmetic floor kernel that ``bench optim`` compares
SparseAdamW's step with (csrc/optim/rows_floor.cpp)."""
import pytest
import reference_kernels as R   # tests/ops, on sys.path through tests/conftest.py
import torch

from recis_compat.ops.optim import sparse_rows_rotate_


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("threads", [1, 2])
def test_rotates_exactly_the_listed_rows(dtype, threads):
    g = torch.Generator().manual_seed(3)
    a, b, c = (torch.randn(5000, 7, generator=g).to(dtype) for _ in range(3))
    rows = torch.randperm(5000, generator=g)[:1200]
    grad = torch.randn(1200, 7, generator=g).to(dtype)
    want = R.sparse_rows_rotate_ref(a, b, c, rows)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        sparse_rows_rotate_(a, b, c, rows, grad)
    finally:
        torch.set_num_threads(prev)
    for got, ref in zip((a, b, c), want):
        assert torch.equal(got, ref)


def test_bad_arguments_are_reported_as_for_adam():
    a, b, c = torch.zeros(4, 2), torch.zeros(4, 2), torch.zeros(4, 2)
    with pytest.raises(RuntimeError, match=r"sparse_rows_rotate_: rows must be in \[0, 4\)"):
        sparse_rows_rotate_(a, b, c, torch.tensor([4]), torch.zeros(1, 2))
    with pytest.raises(RuntimeError, match="grad must be"):
        sparse_rows_rotate_(a, b, c, torch.tensor([1]), torch.zeros(2, 2))
    with pytest.raises(RuntimeError, match="shape"):
        sparse_rows_rotate_(a, b, torch.zeros(3, 2), torch.tensor([1]), torch.zeros(1, 2))


def test_opcheck():
    a, b, c = torch.randn(16, 4), torch.randn(16, 4), torch.randn(16, 4)
    torch.library.opcheck(torch.ops.recis_compat.sparse_rows_rotate_.default,
                          (a, b, c, torch.tensor([3, 0, 9]), torch.randn(3, 4)))
