"""counter_uniform (csrc/embedding/counter_init.*): bit-identical to its torch reference, a pure
function of (seed, id, column), opcheck, errors, and the CUDA twin against the CPU kernel."""
import pytest
import torch

from recis_compat.ops.counter_init import as_int64, counter_uniform
from reference_kernels import counter_uniform_ref

I64 = torch.iinfo(torch.int64)


def _ids(n=5000, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(I64.min, I64.max, (n,), generator=g, dtype=torch.int64)
    ids[:6] = torch.tensor([0, -1, 1, I64.min, I64.max, (7 << 52) | 12345])
    return ids


@pytest.mark.parametrize("seed", [0, 1, -5, (1 << 64) - 1, 12345678901234567890, 2 ** 63])
@pytest.mark.parametrize("width", [1, 3, 16, 33])
def test_bit_identical_to_the_torch_reference(seed, width):
    ids = _ids()
    got = counter_uniform(ids, seed, width)
    assert got.dtype == torch.float64 and got.shape == (ids.numel(), width)
    assert torch.equal(got, counter_uniform_ref(ids, seed, width))
    assert bool(((got > 0) & (got < 1)).all())


def test_pure_function_of_seed_id_and_column():
    ids = _ids(2000)
    full = counter_uniform(ids, 7, 8)
    # any order, any batch split, any thread count: the same value per (id, column)
    perm = torch.randperm(ids.numel())
    assert torch.equal(counter_uniform(ids[perm], 7, 8), full[perm])
    assert torch.equal(torch.cat([counter_uniform(ids[:3], 7, 8), counter_uniform(ids[3:], 7, 8)]), full)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(counter_uniform(ids, 7, 8), full)
    finally:
        torch.set_num_threads(prev)
    # a wider row starts with the narrower row's values; another seed gives other values
    assert torch.equal(counter_uniform(ids, 7, 12)[:, :8], full)
    assert not torch.equal(counter_uniform(ids, 8, 8), full)
    # roughly uniform
    big = counter_uniform(torch.arange(200_000), 3, 1)
    assert abs(big.mean().item() - 0.5) < 0.01 and abs(big.var().item() - 1 / 12) < 0.005


def test_seed_is_taken_modulo_two_to_the_64():
    ids = _ids(100)
    assert torch.equal(counter_uniform(ids, -1, 4), counter_uniform(ids, (1 << 64) - 1, 4))
    assert as_int64((1 << 64) + 5) == 5 and as_int64(1 << 63) == I64.min


def test_empty_and_shaped_ids():
    assert counter_uniform(torch.zeros(0, dtype=torch.int64), 1, 4).shape == (0, 4)
    ids = _ids(12).view(3, 4)
    assert torch.equal(counter_uniform(ids, 1, 2), counter_uniform(ids.reshape(-1), 1, 2))


def test_bad_inputs():
    with pytest.raises(RuntimeError, match="counter_uniform: ids must be a 1-D int64"):
        torch.ops.recis_compat.counter_uniform(torch.zeros(3, dtype=torch.int32), 0, 2)
    with pytest.raises(RuntimeError, match="counter_uniform: ids must be a 1-D int64"):
        torch.ops.recis_compat.counter_uniform(torch.zeros(3, 2, dtype=torch.int64), 0, 2)
    with pytest.raises(RuntimeError, match="width must be >= 1"):
        torch.ops.recis_compat.counter_uniform(torch.zeros(3, dtype=torch.int64), 0, 0)


def test_opcheck():
    torch.library.opcheck(torch.ops.recis_compat.counter_uniform.default, (_ids(64), 11, 5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_twin_matches_cpu():
    ids = _ids(10000)
    for seed, width in [(0, 1), (-3, 16), (1 << 63, 7)]:
        cpu = counter_uniform(ids, seed, width)
        assert torch.equal(counter_uniform(ids.cuda(), seed, width).cpu(), cpu)
